"""A study's report: notebooks/analysis.ipynb executed for the study into executed/<study>/analysis.ipynb, then
exported without code to reports/<study>.html.

Rules: the page is self-contained (plotly.js and the GIFs embedded, nothing loaded from a CDN), so it opens offline;
a failing analysis notebook is a `ReportError` naming the cell and the error. The notebook itself reads the run
directories through `t2s.report`, which imports nothing of this module. Imports `runs` (paths, names); `ablate`
and the command line build on it.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable, Union

import jinja2
import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from papermill.exceptions import PapermillExecutionError

from t2s.study.kernel import execute_notebook
from t2s.study.runs import (
    ANALYSIS_NOTEBOOK,
    EXECUTED_DIR,
    REPORTS_DIR,
    check_study_name,
    notebook_path,
    say,
    shown_path,
)


class ReportError(RuntimeError):
    """The analysis notebook failed; the message names the cell and the error."""


# The lab template without what it would load from a CDN (require.js, MathJax, mermaid): the report opens offline.
# plotly.js is embedded once by report.init_notebook(); the figures and GIFs are inline.
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def export_html(notebook: Union[str, Path], html_path: Union[str, Path], title: str) -> Path:
    """An executed notebook as a code-free, self-contained HTML page.

    Left out: code, prompts, cells tagged "interactive" (widgets need a kernel), stderr (warnings, progress bars),
    and saved widget state (it would pull the widget manager from a CDN).
    """
    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(template_name="lab")
    exporter.extra_loaders = [jinja2.DictLoader({"t2s_offline.html.j2": _OFFLINE_TEMPLATE})]
    exporter.template_file = "t2s_offline.html.j2"
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"interactive"}), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def build_report(study: str, executed_dir: Union[str, Path] = EXECUTED_DIR, reports_dir: Union[str, Path] = REPORTS_DIR,
                 log: Callable[[str], None] = say) -> Path:
    """Execute notebooks/analysis.ipynb for a study into executed/<study>/analysis.ipynb; export reports/<study>.html."""
    executed_dir, reports_dir = Path(executed_dir).resolve(), Path(reports_dir).resolve()
    study_dir = executed_dir / check_study_name(study)
    study_dir.mkdir(parents=True, exist_ok=True)
    notebook = study_dir / "analysis.ipynb"
    # interactive=False: no ipywidgets headless (nbclient can wait forever on an Output widget); the HTML drops them anyway
    parameters = {"study": study, "executed_dir": notebook_path(executed_dir), "reports_dir": notebook_path(reports_dir),
                  "interactive": False}
    try:
        execute_notebook(ANALYSIS_NOTEBOOK, notebook, parameters)
    except PapermillExecutionError as exc:
        raise ReportError(f"{shown_path(notebook)}, cell {exc.cell_index}: {exc.ename}: {exc.evalue}") from exc
    html_path = export_html(notebook, reports_dir / f"{study}.html", title=f"t2s study {study}")
    log(f"report: {shown_path(html_path)}")
    return html_path


def report_command(study: str, executed_dir: Path, reports_dir: Path) -> str:
    """The command line that builds this study's report, with the folders when they are not the defaults."""
    command = f"python -m t2s report --study {study}"
    if executed_dir != EXECUTED_DIR.resolve():
        command += f" --executed-dir {shlex.quote(shown_path(executed_dir))}"
    if reports_dir != REPORTS_DIR.resolve():
        command += f" --reports-dir {shlex.quote(shown_path(reports_dir))}"
    return command
