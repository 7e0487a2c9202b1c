"""Showing things in a notebook: plotly.js embedded once (the exported HTML works offline), display, the explorer."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Optional

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from t2s.report.figures import figure_layout, loss_figure, variant_colors
from t2s.report.load import Study, available_metrics
from t2s.report.samples import latest_samples, no_sample_reason, sample_img_html
from t2s.report.tables import frame_html


def init_notebook() -> None:
    """Embed plotly.js once (the HTML report then works offline); figures shown with `show` rely on it."""
    from IPython.display import HTML, display
    from plotly.offline import get_plotlyjs

    display(HTML(f"<script>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>"
                 f"<script type=\"text/javascript\">{get_plotlyjs()}</script>"))


def figure_bundle(fig: go.Figure) -> dict:
    """Plotly's own mimetype (JupyterLab renders it natively) and an HTML div (what the exported HTML shows)."""
    div = fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False, default_width="100%",
                      config={"responsive": True, "displaylogo": False})
    return {"application/vnd.plotly.v1+json": json.loads(fig.to_json()), "text/html": div, "text/plain": fig.layout.title.text or "figure"}


def bundle(item, empty: str = "Nothing to show: no finished run has this data.") -> Optional[dict]:
    """What `show` displays, as a mimetype bundle: a note for None, a figure, a DataFrame or an HTML string (else None)."""
    if item is None:
        return {"text/html": f"<p><em>{html.escape(empty)}</em></p>", "text/plain": empty}
    if isinstance(item, go.Figure):
        return figure_bundle(item)
    if isinstance(item, pd.DataFrame):
        return {"text/html": frame_html(item, index=True), "text/plain": item.to_string()}
    if isinstance(item, str):
        return {"text/html": item, "text/plain": "(HTML)"}
    return None


def show(item, empty: str = "Nothing to show: no finished run has this data.") -> None:
    """Display a figure, a DataFrame, an HTML string, or a note saying what is missing (for None)."""
    from IPython.display import display

    shown = bundle(item, empty)
    if shown is None:
        display(item)
    else:
        display(shown, raw=True)


def seeds_figure(study: Study, metric_key: str) -> Optional[go.Figure]:
    """Every seed's value of one metric, per variant (the explorer's view)."""
    values = study.values
    if values.empty or metric_key not in values or values[metric_key].isna().all():
        return None
    label = next((m.title for m in available_metrics(study, values) if m.key == metric_key), metric_key)
    fig = px.strip(values, x="variant", y=metric_key, color="variant", hover_name="run",
                   color_discrete_map=variant_colors(study.variants_with_results))
    return figure_layout(fig, f"{label}: one point per seed", yaxis_title=label)


@dataclass
class Explorer:
    """The explorer's controls and what they show: `output.outputs` is rebuilt whenever a control's value changes."""
    box: object  # ipywidgets.VBox: the controls above the output; what `explorer` displays
    variant: object  # ipywidgets.Dropdown of the variants with finished runs
    metric: object  # ipywidgets.Dropdown of (title, key) of the metrics the study has
    prompt: object  # ipywidgets.Dropdown of the sample prompts ("(no samples)" when there are none)
    output: object  # ipywidgets.Output: the seeds figure, the variant's loss figure, its sample for the prompt

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)


def explorer_views(study: Study, variant: str, metric: str, prompt: str) -> list:
    """What the explorer shows for one choice, as mimetype bundles: the seeds figure, the loss figure, the sample."""
    runs = study.runs_of(variant)
    samples = latest_samples(runs[0])
    entry = samples.get(prompt)
    sample = sample_img_html(runs[0], entry, f"{variant}: {prompt}") if entry else None
    why = no_sample_reason(runs[0], bool(samples))
    return [bundle(seeds_figure(study, metric)), bundle(loss_figure(runs, show_raw=True)),
            bundle(sample, empty=f"No sample for this prompt in {variant}: {why}.")]


def explorer_widget(study: Study) -> Optional[Explorer]:
    """ipywidgets controls (variant, metric, prompt) over the study's finished runs; None where there are none."""
    import ipywidgets as widgets

    if not study.finished_runs:
        return None
    metrics = available_metrics(study)
    prompts = list(dict.fromkeys(p for v in study.variants_with_results for p in latest_samples(study.runs_of(v)[0])))
    view = Explorer(box=None, variant=widgets.Dropdown(options=study.variants_with_results, description="variant"),
                    metric=widgets.Dropdown(options=[(m.title, m.key) for m in metrics], description="metric"),
                    prompt=widgets.Dropdown(options=prompts or ["(no samples)"], description="prompt"),
                    output=widgets.Output())

    def update(*_):  # set as the Output's outputs (not captured display calls): the same with or without a kernel
        shown = explorer_views(study, view.variant.value, view.metric.value, view.prompt.value)
        view.output.outputs = tuple({"output_type": "display_data", "data": b, "metadata": {}} for b in shown)

    for control in (view.variant, view.metric, view.prompt):
        control.observe(update, names="value")
    update()
    view.box = widgets.VBox([widgets.HBox([view.variant, view.metric, view.prompt]), view.output])
    return view


def explorer(study: Study) -> None:
    """Display the explorer (JupyterLab); a note where ipywidgets is missing or there is nothing to explore."""
    from IPython.display import display

    try:
        view = explorer_widget(study)
    except ImportError:
        return show(None, empty="Install ipywidgets for the interactive explorer.")
    if view is None:
        return show(None, empty="No finished runs to explore.")
    display(view)
