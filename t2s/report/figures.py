"""Plotly figures: training curves with a seed band per variant, metric bars, change versus the baseline."""
from __future__ import annotations

import math
import textwrap
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from t2s.report.load import BASELINE, Run, Study, available_metrics, variant_order
from t2s.report.stats import describe_difference, finite_values, seed_difference
from t2s.report.tables import metric_estimates


def smooth(values: pd.Series, smoothing: float) -> pd.Series:
    """TensorBoard-style exponential moving average with bias correction; smoothing 0 returns the values."""
    if smoothing <= 0:
        return values
    return values.ewm(alpha=1 - smoothing, adjust=True, ignore_na=True).mean()


def variant_colors(variants: Sequence[str]) -> dict:
    palette = px.colors.qualitative.Plotly
    return {v: palette[i % len(palette)] for i, v in enumerate(variants)}


def _rgba(color: str, alpha: float) -> str:
    red, green, blue = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _by_variant(runs: Union[Study, Sequence[Run]]) -> list:
    """[(variant, [finished runs with data])] in study order; a list of runs is taken as given."""
    if isinstance(runs, Study):
        return [(v, runs.runs_of(v)) for v in runs.variants_with_results]
    order = variant_order(r.variant for r in runs)
    return [(v, [r for r in runs if r.variant == v]) for v in order]


def _seed_curves(runs: Sequence[Run], table: str, column: str, smoothing: float = 0.0) -> pd.DataFrame:
    """Index step, one column per seed: the (smoothed) curve of `column` from each run's `table`."""
    curves = {}
    for run in runs:
        frame = getattr(run, table)
        if frame.empty or column not in frame or "step" not in frame:
            continue
        series = pd.to_numeric(frame.set_index("step")[column], errors="coerce")
        if series.notna().any():
            curves[f"seed {run.seed}"] = smooth(series, smoothing)
    return pd.DataFrame(curves).sort_index()


def _add_band(fig: go.Figure, curves: pd.DataFrame, color: str, group: str, **where) -> None:
    """A min–max band across seeds (drawn only with two seeds or more)."""
    if curves.shape[1] < 2:
        return
    steps = curves.index.to_numpy()
    fig.add_trace(go.Scatter(x=steps, y=curves.max(axis=1), mode="lines", line=dict(width=0), legendgroup=group,
                             showlegend=False, hoverinfo="skip"), **where)
    fig.add_trace(go.Scatter(x=steps, y=curves.min(axis=1), mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor=_rgba(color, 0.2), legendgroup=group, showlegend=False, hoverinfo="skip"),
                  **where)


def _add_mean_curve(fig: go.Figure, curves: pd.DataFrame, color: str, group: str, name: str, mode: str = "lines",
                    **line) -> None:
    """The seeds' min–max band and their mean (curves: one column per seed, indexed by step)."""
    _add_band(fig, curves, color, group)
    fig.add_trace(go.Scatter(x=curves.index, y=curves.mean(axis=1), mode=mode, legendgroup=group, name=name,
                             line=dict(color=color, **line)))


def figure_layout(fig: go.Figure, title: str, **axes) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", height=axes.pop("height", 420),
                      legend=dict(groupclick="togglegroup"), margin=dict(t=60, l=60, r=20, b=50), **axes)
    return fig


def _stacked(titles: tuple[str, str]) -> go.Figure:
    """Two panels over one shared step or time axis."""
    return make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=titles)


def _groups_and_colors(runs: Union[Study, Sequence[Run]]) -> tuple[list, dict]:
    groups = _by_variant(runs)
    return groups, variant_colors([v for v, _ in groups])


def _training_curves(runs: Union[Study, Sequence[Run]], column: str, smoothing: float):
    """(groups, [(variant, its runs, colour, curves)]) for one training-log column, variants without data left out."""
    groups, colors = _groups_and_colors(runs)
    found = []
    for variant, variant_runs in groups:
        curves = _seed_curves(variant_runs, "training", column, smoothing)
        if not curves.empty:
            found.append((variant, variant_runs, colors[variant], curves))
    return groups, found


def loss_figure(runs: Union[Study, Sequence[Run]], smoothing: float = 0.6, show_raw: bool = False) -> Optional[go.Figure]:
    """Training loss per variant: smoothed mean over seeds, the seeds' min–max as a band, optionally the raw points."""
    groups, found = _training_curves(runs, "loss", smoothing)
    fig = go.Figure()
    for variant, variant_runs, color, curves in found:
        if show_raw:
            raw = _seed_curves(variant_runs, "training", "loss")
            fig.add_trace(go.Scatter(x=raw.index, y=raw.mean(axis=1), mode="lines", name=f"{variant} (raw)",
                                     line=dict(color=_rgba(color, 0.35), width=1), legendgroup=variant))
        _add_mean_curve(fig, curves, color, variant, f"{variant} (n={curves.shape[1]})", width=2)
    if not fig.data:
        return None
    band = ", band: min–max over seeds" if any(len(r) > 1 for _, r in groups) else ""
    return figure_layout(fig, f"Training loss (EMA-smoothed, smoothing {smoothing}{band})",
                   xaxis_title="optimizer step", yaxis_title="loss")


def validation_figure(runs: Union[Study, Sequence[Run]]) -> Optional[go.Figure]:
    """Validation loss over steps (the training's, on the development part of the held-out clips: a curve to watch,
    not a result): raw weights dashed, EMA weights solid; mean over seeds with min–max band."""
    groups, colors = _groups_and_colors(runs)
    fig = go.Figure()
    for variant, variant_runs in groups:
        for column, dash, label in (("val_loss_raw", "dash", "raw"), ("val_loss_ema", "solid", "EMA")):
            curves = _seed_curves(variant_runs, "validation", column)
            if curves.empty:
                continue
            group = f"{variant} {label}"
            _add_mean_curve(fig, curves, colors[variant], group, f"{variant}, {label} weights", "lines+markers",
                            dash=dash)
    if not fig.data:
        return None
    return figure_layout(fig, "Validation loss on the development part: raw weights (dashed) vs EMA weights (solid)",
                   xaxis_title="optimizer step", yaxis_title="validation loss (development part)")


def schedule_figure(runs: Union[Study, Sequence[Run]]) -> Optional[go.Figure]:
    """Learning rate and the effective EMA decay over steps (one seed per variant: schedules do not depend on it)."""
    groups, colors = _groups_and_colors(runs)
    fig = _stacked(("learning rate", "effective EMA decay"))
    for variant, variant_runs in groups:
        for row, column in ((1, "lr"), (2, "ema_decay")):
            curves = _seed_curves(variant_runs[:1], "training", column)
            if curves.empty:
                continue
            fig.add_trace(go.Scatter(x=curves.index, y=curves.iloc[:, 0], mode="lines", name=variant,
                                     legendgroup=variant, showlegend=row == 1 or "lr" not in variant_runs[0].training,
                                     line=dict(color=colors[variant])), row=row, col=1)
    if not fig.data:
        return None
    fig.update_xaxes(title_text="optimizer step", row=2, col=1)
    return figure_layout(fig, "Learning rate and effective EMA decay (variants without EMA have no decay)", height=520)


def _elapsed_minutes(frame: pd.DataFrame) -> pd.Series:
    if "timestamp" in frame and frame["timestamp"].notna().any():
        return (frame["timestamp"] - frame["timestamp"].min()).dt.total_seconds() / 60
    return pd.Series(np.nan, index=frame.index)


def memory_figure(runs: Union[Study, Sequence[Run]]) -> Optional[go.Figure]:
    """Accelerator memory allocated and process RSS over wall-clock time, one line per run."""
    groups, colors = _groups_and_colors(runs)
    fig = _stacked(("accelerator memory allocated (GB)", "process resident memory (GB)"))
    for variant, variant_runs in groups:
        for i, run in enumerate(variant_runs):
            frame = run.memory
            if frame.empty:
                continue
            minutes = _elapsed_minutes(frame)
            for row, column in ((1, "allocated_gb"), (2, "rss_gb")):
                if column in frame and pd.to_numeric(frame[column], errors="coerce").notna().any():
                    fig.add_trace(go.Scatter(x=minutes, y=frame[column], mode="lines", name=variant,
                                             legendgroup=variant, showlegend=(i == 0 and row == 1),
                                             hovertext=run.name, line=dict(color=colors[variant])), row=row, col=1)
    if not fig.data:
        return None
    fig.update_xaxes(title_text="minutes since the run started", row=2, col=1)
    return figure_layout(fig, "Memory over time (one line per run)", height=520)


def throughput_figure(runs: Union[Study, Sequence[Run]], smoothing: float = 0.6) -> Optional[go.Figure]:
    """Training throughput (clips per second) over steps, smoothed mean over seeds with a min–max band."""
    fig = go.Figure()
    for variant, _, color, curves in _training_curves(runs, "clips_per_s", smoothing)[1]:
        _add_mean_curve(fig, curves, color, variant, variant)
    if not fig.data:
        return None
    return figure_layout(fig, "Throughput", xaxis_title="optimizer step", yaxis_title="clips per second")


def metric_bars_figure(study: Study) -> Optional[go.Figure]:
    """One panel per metric: the mean per variant with its 95% interval as error bars (none where n=1)."""
    estimates = metric_estimates(study)
    if estimates.empty:
        return None
    metrics = available_metrics(study)
    cols = 3
    rows = math.ceil(len(metrics) / cols)
    titles = [textwrap.fill(m.title, 38).replace("\n", "<br>") for m in metrics]  # long labels on two lines
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.5 / rows)
    colors = variant_colors(study.variants_with_results)
    for i, metric in enumerate(metrics):
        part = estimates[estimates["metric"] == metric.key]
        for _, row in part.iterrows():
            half = (row["ci_high"] - row["ci_low"]) / 2 if row["n"] >= 2 else None
            fig.add_trace(go.Bar(x=[row["variant"]], y=[row["mean"]], name=row["variant"], legendgroup=row["variant"],
                                 showlegend=i == 0, marker_color=colors[row["variant"]],
                                 error_y=dict(type="data", array=[half], visible=half is not None),
                                 hovertext=str(row['display']), hoverinfo="text"),
                          row=i // cols + 1, col=i % cols + 1)
    return figure_layout(fig, "Metrics per variant: mean over seeds, error bars = 95% interval (none where n=1)",
                   height=260 * rows + 80, barmode="group")


def change_vs_baseline(study: Study, baseline: str = BASELINE) -> pd.DataFrame:
    """Per (variant, metric): percent change of the mean vs the baseline's, with the interval of the findings (paired
    by seed where both variants have it, Welch otherwise) in percent."""
    values = study.values
    rows = []
    if baseline not in study.variants_with_results:
        return pd.DataFrame(rows, columns=["variant", "metric", "label", "better", "percent", "low", "high", "difference"])
    base = values[values["variant"] == baseline]
    for metric in available_metrics(study, values):
        reference = finite_values(base[metric.key])
        if len(reference) == 0 or reference.mean() == 0:
            continue
        scale = 100 / abs(reference.mean())
        for variant in study.variants_with_results:
            if variant == baseline:
                continue
            part = values[values["variant"] == variant]
            d = seed_difference(dict(zip(part["seed"], part[metric.key])), dict(zip(base["seed"], base[metric.key])))
            if not math.isfinite(d.diff):
                continue
            rows.append({"variant": variant, "metric": metric.key, "label": metric.title, "better": metric.better or "",
                         "percent": d.diff * scale, "low": d.low * scale, "high": d.high * scale,
                         "difference": describe_difference(d)})
    return pd.DataFrame(rows, columns=["variant", "metric", "label", "better", "percent", "low", "high", "difference"])


def change_figure(study: Study, baseline: str = BASELINE) -> Optional[go.Figure]:
    """Horizontal bars: each variant's change vs the baseline in percent, error bars from the paired interval."""
    change = change_vs_baseline(study, baseline)
    if change.empty:
        return None
    colors = variant_colors(study.variants_with_results)
    fig = go.Figure()
    for variant, part in change.groupby("variant", sort=False):
        has = part["low"].notna()
        fig.add_trace(go.Bar(
            y=part["label"], x=part["percent"], orientation="h", name=variant, marker_color=colors[variant],
            error_x=dict(type="data", symmetric=False, array=(part["high"] - part["percent"]).where(has).tolist(),
                         arrayminus=(part["percent"] - part["low"]).where(has).tolist()),
            hovertext=part["difference"], hoverinfo="text+x"))
    fig.add_vline(x=0, line_color="grey")
    reach = change_axis_reach(change)
    cut = bool(((change["low"] < -reach) | (change["high"] > reach)).any())
    title = f"Change versus {baseline} (%), error bars = 95% interval paired by seed (none with one seed or no spread)"
    if cut:
        title += f"<br><sup>axis cut at ±{reach:.3g}%: a longer error bar runs off the plot (hover a bar for its interval)</sup>"
    return figure_layout(fig, title, xaxis_title="percent change of the mean", height=140 + 28 * len(change),
                   barmode="group", yaxis=dict(autorange="reversed"), xaxis=dict(range=[-reach, reach]))


def change_axis_reach(change: pd.DataFrame) -> float:
    """The change figure's x axis reaches +-this (%): every bar, and the error bars up to their 75th percentile end,
    with 15% room (at least 5%). A metric whose baseline mean is near 0 (SSIM, a gap, a BLEU at its floor) has a
    relative interval of hundreds of percent; sized to it, every other bar would be a sliver at 0."""
    ends = pd.concat([change["low"].abs(), change["high"].abs()]).dropna()
    wide = float(ends.quantile(0.75)) if len(ends) else 0.0
    return max(5.0, 1.15 * max(float(change["percent"].abs().max()), wide))
