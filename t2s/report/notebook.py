"""Showing things in a notebook: plotly.js embedded once (the exported HTML works offline), display, the explorer."""
from __future__ import annotations

import html
import json
from typing import Optional

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from .figures import _colors, _layout, loss_figure
from .load import Study, available_metrics
from .samples import _img, latest_samples
from .tables import _frame_html

__all__ = ['init_notebook', 'figure_bundle', 'show', 'seeds_figure', 'explorer']

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


def show(item, empty: str = "Nothing to show: no finished run has this data.") -> None:
    """Display a figure, a DataFrame, an HTML string, or a note saying what is missing (for None)."""
    from IPython.display import HTML, display

    if item is None:
        display(HTML(f"<p><em>{html.escape(empty)}</em></p>"))
    elif isinstance(item, go.Figure):
        display(figure_bundle(item), raw=True)
    elif isinstance(item, pd.DataFrame):
        display(HTML(_frame_html(item, index=True)))
    elif isinstance(item, str):
        display(HTML(item))
    else:
        display(item)


def seeds_figure(study: Study, metric_key: str) -> Optional[go.Figure]:
    """Every seed's value of one metric, per variant (the explorer's view)."""
    values = study.values
    if values.empty or metric_key not in values or values[metric_key].isna().all():
        return None
    label = next((m.title for m in available_metrics(study, values) if m.key == metric_key), metric_key)
    fig = px.strip(values, x="variant", y=metric_key, color="variant", hover_name="run",
                   color_discrete_map=_colors(study.variants_with_results))
    return _layout(fig, f"{label}: one point per seed", yaxis_title=label)


def explorer(study: Study) -> None:
    """ipywidgets controls (variant, metric, prompt) for JupyterLab; a note where there is nothing to explore."""
    from IPython.display import display

    try:
        import ipywidgets as widgets
    except ImportError:
        return show(None, empty="Install ipywidgets for the interactive explorer.")
    if not study.finished_runs:
        return show(None, empty="No finished runs to explore.")
    metrics = available_metrics(study)
    prompts = list(dict.fromkeys(p for v in study.variants_with_results for p in latest_samples(study.runs_of(v)[0])))
    variant = widgets.Dropdown(options=study.variants_with_results, description="variant")
    metric = widgets.Dropdown(options=[(m.title, m.key) for m in metrics], description="metric")
    prompt = widgets.Dropdown(options=prompts or ["(no samples)"], description="prompt")
    out = widgets.Output()

    def update(*_):
        with out:
            out.clear_output(wait=True)
            runs = study.runs_of(variant.value)
            show(seeds_figure(study, metric.value))
            show(loss_figure(runs, show_raw=True))
            entry = latest_samples(runs[0]).get(prompt.value)
            show(_img(runs[0], entry, f"{variant.value}: {prompt.value}") if entry else None,
                 empty="No sample for this prompt in this variant.")

    for control in (variant, metric, prompt):
        control.observe(update, names="value")
    update()
    display(widgets.VBox([widgets.HBox([variant, metric, prompt]), out]))
