"""From run directories to tables, statistics, figures and findings: everything the notebooks show.

A run directory (`executed/<study>/<variant>-seed<k>/`, see README) is the only thing read here, so a report can be
rebuilt from a copied `executed/` folder. The notebooks stay thin: each cell calls one function below and shows
what it returns. Reading order: what a metric is, loading runs, statistics, tables, figures, samples, findings,
provenance, and last how things are displayed in a notebook (plotly.js embedded once, so the HTML works offline).

Every value a run could not produce stays missing (NaN / null) with its reason; nothing is filled in.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import stats

from t2s.config import PROJECT_ROOT

DEFAULT_VARIANTS = ("baseline", "text_finetuned", "no_ema")
BASELINE = "baseline"
RUN_NAME = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)$")
CONFIDENCE = 0.95


# ----------------------------------------------------------------------------------------------- what a metric is
@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: Optional[str]  # "lower", "higher", or None where neither direction is better
    source: str  # "training" (summary.json) or "evaluation" (logs/evaluation_metrics.csv)

    @property
    def title(self) -> str:
        return self.label + {"lower": " ↓", "higher": " ↑"}.get(self.better, "")


# The primary metric: validation loss of the weights a variant would ship (EMA where it keeps one, raw otherwise).
PRIMARY = "val_loss"
TRAINING_METRICS = (
    Metric("val_loss", "validation loss (deployed weights)", "lower", "training"),
    Metric("val_loss_raw", "validation loss, raw weights", "lower", "training"),
    Metric("val_loss_ema", "validation loss, EMA weights", "lower", "training"),
    Metric("final_loss", "final training loss", "lower", "training"),
    Metric("min_loss", "minimum training loss", "lower", "training"),
    Metric("train_time_hours", "training time (h)", "lower", "training"),
    Metric("peak_memory_gb", "peak memory (GB)", "lower", "training"),
    Metric("clips_per_s", "throughput (clips/s)", "higher", "training"),
    Metric("num_parameters_millions", "parameters (M)", None, "training"),
)
EVALUATION_METRICS = (  # the columns of t2s.evaluate's logs/evaluation_metrics.csv, with the way they are read
    Metric("fvd", "FVD", "lower", "evaluation"),
    Metric("lpips", "LPIPS", "lower", "evaluation"),
    Metric("ssim", "SSIM", "higher", "evaluation"),
    Metric("psnr", "PSNR (dB)", "higher", "evaluation"),
    Metric("temporal_consistency", "temporal consistency (1 = frozen clip)", None, "evaluation"),
    Metric("temporal_consistency_real", "temporal consistency of the real clips", None, "evaluation"),
    Metric("motion_magnitude", "motion magnitude", None, "evaluation"),
    Metric("motion_magnitude_real", "motion magnitude of the real clips", None, "evaluation"),
    Metric("dtw_error", "DTW hand error", "lower", "evaluation"),
    Metric("dtw_error_shuffled", "DTW hand error, shuffled captions (control)", None, "evaluation"),
    Metric("hand_detection_rate", "hand detection rate", "higher", "evaluation"),
    Metric("inference_time_ms", "inference time (ms)", "lower", "evaluation"),
    Metric("inference_memory_gb", "inference memory (GB)", "lower", "evaluation"),
)
# Columns of evaluation_metrics.csv that are not metrics, or repeat one summary.json already gives.
EVALUATION_NON_METRICS = {"model_name", "config_name", "weights", "timestamp", "num_clips", "val_loss",
                          "num_parameters_millions"}


# ----------------------------------------------------------------------------------------------- loading runs
@dataclass
class Run:
    """One run directory, read leniently: a missing or unreadable file is an empty table and a noted problem."""

    name: str
    variant: str
    seed: int
    folder: Path
    notebook: Path
    status: str  # metadata status, or "failed" (failures.json), "incomplete" (no metadata yet), "not started"
    error: Optional[str]
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)
    memory: pd.DataFrame = field(default_factory=pd.DataFrame)
    evaluation: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def deployed_weights(self) -> str:
        """The weights this variant would ship: its EMA if it keeps one, else the raw weights."""
        if "use_ema" in self.config:
            return "ema" if self.config["use_ema"] else "raw"
        return "ema" if _number(self.summary.get("val_loss_ema")) is not None else "raw"


def _read_json(path: Path, problems: list, default):
    """The file's JSON if it is of the default's type; the default (and a noted problem) otherwise."""
    if not path.is_file():
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
        return default
    if not isinstance(data, type(default)):
        problems.append(f"{path.name}: expected a JSON {type(default).__name__}, found {type(data).__name__}")
        return default
    return data


def _read_csv(path: Path, problems: list) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
        return pd.DataFrame()
    if "step" in frame:  # a resumed run logs the steps after its checkpoint again: keep the latest row per step
        frame = frame.dropna(subset=["step"]).drop_duplicates("step", keep="last").sort_values("step")
    if "timestamp" in frame:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], errors="coerce", format="ISO8601", utc=True)
    return frame.reset_index(drop=True)


def load_run(folder: Union[str, Path], notebook: Optional[Path] = None, failure: Optional[dict] = None) -> Run:
    """Read one run directory. `failure` is its entry in the study's failures.json, if any."""
    folder = Path(folder)
    problems: list = []
    config = _read_json(folder / "config.json", problems, {})
    metadata = _read_json(folder / "metadata.json", problems, {})
    match = RUN_NAME.match(folder.name)
    variant = config.get("variant") or (match["variant"] if match else folder.name)
    seed = config.get("seed", int(match["seed"]) if match else 0)

    status = metadata.get("status") or ("incomplete" if folder.is_dir() else "not started")
    error = metadata.get("error")
    if failure and status != "finished":
        status, error = "failed", error or f"{failure.get('ename')}: {failure.get('evalue')}"

    logs = folder / "logs"
    return Run(
        name=folder.name,
        variant=variant,
        seed=int(seed),
        folder=folder,
        notebook=notebook or folder.with_suffix(".ipynb"),
        status=status,
        error=error,
        config=config,
        metadata=metadata,
        summary=_read_json(folder / "summary.json", problems, {}),
        training=_read_csv(logs / "training_metrics.csv", problems),
        validation=_read_csv(logs / "validation_metrics.csv", problems),
        memory=_read_csv(logs / "gpu_memory.csv", problems),
        evaluation=_read_csv(logs / "evaluation_metrics.csv", problems),
        samples=_read_json(folder / "samples" / "samples.json", problems, []),
        problems=problems,
    )


@dataclass
class Study:
    name: str
    folder: Path
    runs: list  # every run found, any status, ordered by variant then seed
    variants: list  # expected variants (study.json) and any found, in order
    expected: list  # (variant, seed) pairs study.json asked for; empty when unknown
    failures: dict  # failures.json: run name -> {ename, evalue, traceback, notebook, ...}
    problems: list = field(default_factory=list)  # unreadable study files

    @property
    def finished_runs(self) -> list:
        return [r for r in self.runs if r.finished]

    @property
    def unfinished_runs(self) -> list:
        return [r for r in self.runs if not r.finished]

    @property
    def missing(self) -> list:
        """Run names asked for (study.json) with neither a run folder nor a notebook."""
        present = {r.name for r in self.runs}
        return [f"{v}-seed{s}" for v, s in self.expected if f"{v}-seed{s}" not in present]

    @property
    def is_partial(self) -> bool:
        return bool(self.unfinished_runs or self.missing or self.variants_without_results)

    @property
    def variants_with_results(self) -> list:
        done = {r.variant for r in self.finished_runs}
        return [v for v in self.variants if v in done]

    @property
    def variants_without_results(self) -> list:
        return [v for v in self.variants if v not in self.variants_with_results]

    def runs_of(self, variant: str) -> list:
        return [r for r in self.finished_runs if r.variant == variant]

    @cached_property
    def values(self) -> pd.DataFrame:
        """run_metrics(self), computed once: one row per finished run, one column per metric."""
        return run_metrics(self)


def _variant_order(names: Iterable[str], first: Sequence[str] = DEFAULT_VARIANTS) -> list:
    names = list(dict.fromkeys(names))
    return [v for v in first if v in names] + sorted(v for v in names if v not in first)


def load_study(study: str, executed_dir: Union[str, Path] = "executed") -> Study:
    """Every run of `executed/<study>/`: run folders, notebooks without a folder, failures.json, study.json."""
    folder = Path(executed_dir) / study
    problems: list = []
    failures = _read_json(folder / "failures.json", problems, {})
    plan = _read_json(folder / "study.json", problems, {})
    names = {n for n in failures if RUN_NAME.match(n)}
    for path in folder.iterdir() if folder.is_dir() else ():
        name = path.name if path.is_dir() else path.stem if path.suffix == ".ipynb" else ""
        if RUN_NAME.match(name) and not name.startswith("."):
            names.add(name)
    runs = [load_run(folder / n, folder / f"{n}.ipynb", failures.get(n)) for n in names]

    planned = list(plan.get("variants", []))
    seeds = list(plan.get("seeds", []))
    variants = _variant_order(planned + [r.variant for r in runs], first=planned or DEFAULT_VARIANTS)
    rank = {v: i for i, v in enumerate(variants)}
    runs.sort(key=lambda r: (rank[r.variant], r.seed))
    expected = [(v, s) for v in planned for s in seeds]
    return Study(name=study, folder=folder, runs=runs, variants=variants, expected=expected, failures=failures,
                 problems=problems)


# ----------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its Student-t confidence interval (none for fewer than two seeds)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.has_interval else math.nan


def _finite(values) -> np.ndarray:
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def mean_ci(values, confidence: float = CONFIDENCE) -> Estimate:
    """Mean and Student-t interval over the non-missing values; n=1 gives the mean and no interval."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    sem = float(stats.sem(x))
    if sem == 0:
        return Estimate(mean, mean, mean, n)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high), n)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with a confidence interval; `significant` is None when there is no interval."""

    diff: float
    low: float
    high: float
    n_a: int
    n_b: int
    method: str  # "Welch" (two groups of seeds) or "paired" (two weight sets within the same runs)

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def significant(self) -> Optional[bool]:
        if not self.has_interval:
            return None
        return not (self.low <= 0 <= self.high)


def welch_difference(a, b, confidence: float = CONFIDENCE) -> Difference:
    """Difference of means a - b with Welch's t interval (unequal variances); needs two values on each side."""
    x, y = _finite(a), _finite(b)
    if len(x) == 0 or len(y) == 0:
        return Difference(math.nan, math.nan, math.nan, len(x), len(y), "Welch")
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Difference(diff, math.nan, math.nan, len(x), len(y), "Welch")
    if x.var(ddof=1) == 0 and y.var(ddof=1) == 0:  # no spread at all: the interval is the point
        return Difference(diff, diff, diff, len(x), len(y), "Welch")
    interval = stats.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
    return Difference(diff, float(interval.low), float(interval.high), len(x), len(y), "Welch")


def paired_difference(a, b, confidence: float = CONFIDENCE) -> Difference:
    """Mean of the per-run differences a_i - b_i (pairs with a missing side are dropped), Student-t interval."""
    pairs = pd.DataFrame({"a": pd.to_numeric(pd.Series(list(a)), errors="coerce"),
                          "b": pd.to_numeric(pd.Series(list(b)), errors="coerce")}).dropna()
    estimate = mean_ci(pairs["a"] - pairs["b"], confidence)
    return Difference(estimate.mean, estimate.low, estimate.high, estimate.n, estimate.n, "paired")


def format_estimate(estimate: Estimate, digits: int = 4) -> str:
    if estimate.n == 0:
        return "—"
    if not estimate.has_interval:
        return f"{estimate.mean:.{digits}g} (n=1, no interval)"
    return f"{estimate.mean:.{digits}g} ± {estimate.half_width:.2g}"


def format_difference(d: Difference, digits: int = 4, verdict: bool = True) -> str:
    """'+0.012, 95% CI [+0.004, +0.020] (Welch, n=3 vs 3; significant)'; a single seed is said to give no interval."""
    if not math.isfinite(d.diff):
        return "—"
    sizes = f"n={d.n_a}" if d.method == "paired" else f"n={d.n_a} vs {d.n_b}"
    if not d.has_interval:
        return f"{d.diff:+.{digits}g} ({sizes}: a single seed gives no interval)"
    called = ("; significant" if d.significant else "; spans zero: not significant") if verdict else ""
    return f"{d.diff:+.{digits}g}, 95% CI [{d.low:+.{digits}g}, {d.high:+.{digits}g}] ({d.method}, {sizes}{called})"


# ----------------------------------------------------------------------------------------------- tables
def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def evaluation_row(run: Run, weights: Optional[str] = None) -> dict:
    """The evaluation_metrics row of one weight set (default: the deployed weights); {} when absent."""
    frame = run.evaluation
    if frame.empty:
        return {}
    weights = weights or run.deployed_weights
    if "weights" in frame:
        chosen = frame[frame["weights"].astype(str) == weights]
        frame = chosen if not chosen.empty else frame
    return frame.iloc[-1].to_dict()


def evaluation_metrics(study: Study) -> list:
    """The evaluation metrics any finished run reports a value for: the known ones first, then any new column."""
    columns: dict = {}
    for run in study.finished_runs:
        for column in run.evaluation.columns:
            if column in EVALUATION_NON_METRICS or column.endswith("_status"):
                continue
            if pd.to_numeric(run.evaluation[column], errors="coerce").notna().any():
                columns[column] = True
    known = [m for m in EVALUATION_METRICS if m.key in columns]
    new = [Metric(c, c.replace("_", " "), None, "evaluation") for c in sorted(columns) if c not in {m.key for m in EVALUATION_METRICS}]
    return known + new


def run_metrics(study: Study) -> pd.DataFrame:
    """One row per finished run: variant, seed, run, and every metric's value (NaN where it is null)."""
    rows = []
    evaluated_metrics = evaluation_metrics(study)
    for run in study.finished_runs:
        row = {"variant": run.variant, "seed": run.seed, "run": run.name}
        for metric in TRAINING_METRICS:
            row[metric.key] = _number(run.summary.get(metric.key))
        row[PRIMARY] = _number(run.summary.get(f"val_loss_{run.deployed_weights}"))
        if row[PRIMARY] is None:
            row[PRIMARY] = _number(run.summary.get("val_loss_raw"))
        evaluated = evaluation_row(run)
        for metric in evaluated_metrics:
            row[metric.key] = _number(evaluated.get(metric.key))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.astype({c: float for c in frame.columns if c not in ("variant", "seed", "run")})


def available_metrics(study: Study, values: Optional[pd.DataFrame] = None) -> list:
    """The metrics with at least one value in this study, training ones first."""
    values = study.values if values is None else values
    candidates = list(TRAINING_METRICS) + evaluation_metrics(study)
    return [m for m in candidates if m.key in values and values[m.key].notna().any()]


def metric_estimates(study: Study) -> pd.DataFrame:
    """Long table, one row per (variant, metric): mean, 95% interval bounds, n seeds, and the display text."""
    values = study.values
    rows = []
    for metric in available_metrics(study, values):
        for variant in study.variants_with_results:
            estimate = mean_ci(values.loc[values["variant"] == variant, metric.key])
            rows.append({
                "variant": variant, "metric": metric.key, "label": metric.label, "better": metric.better or "",
                "mean": estimate.mean, "ci_low": estimate.low, "ci_high": estimate.high, "n": estimate.n,
                "display": format_estimate(estimate),
            })
    columns = ["variant", "metric", "label", "better", "mean", "ci_low", "ci_high", "n", "display"]
    return pd.DataFrame(rows, columns=columns)


def comparison_table(study: Study) -> Optional[pd.DataFrame]:
    """Metrics as rows, variants as columns, each cell 'mean ± 95% CI half-width' over seeds; None if no runs."""
    estimates = metric_estimates(study)
    if estimates.empty:
        return None
    titles = {m.key: m.title for m in available_metrics(study)}
    table = estimates.pivot(index="metric", columns="variant", values="display")
    table = table.reindex(index=list(titles), columns=study.variants_with_results)
    seeds = pd.DataFrame([[str(len(study.runs_of(v))) for v in table.columns]], index=["seeds (n)"], columns=table.columns)
    table = pd.concat([seeds, table.rename(index=titles)])
    table.index.name = "metric"
    table.columns.name = None
    return table.fillna("—")


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs tabulate, which the kit does not pin)."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [table.index.name or ""] + [cell(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([cell(i)] + [cell(v) for v in row]) + " |" for i, row in zip(table.index, table.values)]
    return "\n".join(lines) + "\n"


def write_comparison_table(study: Study, reports_dir: Union[str, Path] = "reports") -> dict:
    """reports/<study>/comparison_table.csv (long, numeric) and .md (the table as shown); {} if no finished run."""
    table = comparison_table(study)
    if table is None:
        return {}
    folder = Path(reports_dir) / study.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / "comparison_table.csv", "md": folder / "comparison_table.md"}
    metric_estimates(study).to_csv(paths["csv"], index=False)
    note = (f"Mean ± half-width of the {CONFIDENCE:.0%} Student-t interval over seeds; n=1 gives no interval. "
            "↓ lower is better, ↑ higher is better.\n\n")
    paths["md"].write_text(f"# Study {study.name}: comparison\n\n{note}{markdown_table(table)}", encoding="utf-8")
    return paths


def status_table(study: Study, reports_dir: Union[str, Path] = "reports") -> pd.DataFrame:
    """Every run: status, steps, time, the notebook (a path relative to the report) and the error if any."""
    rows = []
    for run in study.runs:
        rows.append({
            "run": run.name, "variant": run.variant, "seed": run.seed, "status": run.status,
            "steps": str(run.summary.get("steps", "—")), "hours": _number(run.summary.get("train_time_hours")),
            "notebook": relative_link(run.notebook, reports_dir) if run.notebook.exists() else "(none)",
            "error": public_text(run.error or ""),
        })
    return pd.DataFrame(rows, columns=["run", "variant", "seed", "status", "steps", "hours", "notebook", "error"])


def summary_table(run: Run) -> pd.DataFrame:
    """One run's summary.json as a two-column table, status first."""
    values = {"status": run.status, **run.summary}
    return pd.DataFrame({"value": [("—" if v is None else v) for v in values.values()]}, index=list(values), dtype=object)


def config_table(config) -> pd.DataFrame:
    """A Config (or its dict) as a key/value table."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return pd.DataFrame({"value": [str(v) for v in data.values()]}, index=list(data))


# ----------------------------------------------------------------------------------------------- figures
def smooth(values: pd.Series, smoothing: float) -> pd.Series:
    """TensorBoard-style exponential moving average with bias correction; smoothing 0 returns the values."""
    if smoothing <= 0:
        return values
    return values.ewm(alpha=1 - smoothing, adjust=True, ignore_na=True).mean()


def _colors(variants: Sequence[str]) -> dict:
    palette = px.colors.qualitative.Plotly
    return {v: palette[i % len(palette)] for i, v in enumerate(variants)}


def _rgba(color: str, alpha: float) -> str:
    red, green, blue = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _by_variant(runs: Union[Study, Sequence[Run]]) -> list:
    """[(variant, [finished runs with data])] in study order; a list of runs is taken as given."""
    if isinstance(runs, Study):
        return [(v, runs.runs_of(v)) for v in runs.variants_with_results]
    order = _variant_order(r.variant for r in runs)
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


def _layout(fig: go.Figure, title: str, **axes) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", height=axes.pop("height", 420),
                      legend=dict(groupclick="togglegroup"), margin=dict(t=60, l=60, r=20, b=50), **axes)
    return fig


def loss_figure(runs: Union[Study, Sequence[Run]], smoothing: float = 0.6, show_raw: bool = False) -> Optional[go.Figure]:
    """Training loss per variant: smoothed mean over seeds, the seeds' min–max as a band, optionally the raw points."""
    groups = _by_variant(runs)
    colors = _colors([v for v, _ in groups])
    fig = go.Figure()
    for variant, variant_runs in groups:
        curves = _seed_curves(variant_runs, "training", "loss", smoothing)
        if curves.empty:
            continue
        color = colors[variant]
        if show_raw:
            raw = _seed_curves(variant_runs, "training", "loss")
            fig.add_trace(go.Scatter(x=raw.index, y=raw.mean(axis=1), mode="lines", name=f"{variant} (raw)",
                                     line=dict(color=_rgba(color, 0.35), width=1), legendgroup=variant))
        _add_mean_curve(fig, curves, color, variant, f"{variant} (n={curves.shape[1]})", width=2)
    if not fig.data:
        return None
    band = ", band: min–max over seeds" if any(len(r) > 1 for _, r in groups) else ""
    return _layout(fig, f"Training loss (EMA-smoothed, smoothing {smoothing}{band})",
                   xaxis_title="optimizer step", yaxis_title="loss")


def validation_figure(runs: Union[Study, Sequence[Run]]) -> Optional[go.Figure]:
    """Validation loss over steps: raw weights dashed, EMA weights solid; mean over seeds with min–max band."""
    groups = _by_variant(runs)
    colors = _colors([v for v, _ in groups])
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
    return _layout(fig, "Validation loss: raw weights (dashed) vs EMA weights (solid)",
                   xaxis_title="optimizer step", yaxis_title="validation loss")


def schedule_figure(runs: Union[Study, Sequence[Run]]) -> Optional[go.Figure]:
    """Learning rate and the effective EMA decay over steps (one seed per variant: schedules do not depend on it)."""
    groups = _by_variant(runs)
    colors = _colors([v for v, _ in groups])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("learning rate", "effective EMA decay"))
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
    return _layout(fig, "Learning rate and effective EMA decay (variants without EMA have no decay)", height=520)


def _elapsed_minutes(frame: pd.DataFrame) -> pd.Series:
    if "timestamp" in frame and frame["timestamp"].notna().any():
        return (frame["timestamp"] - frame["timestamp"].min()).dt.total_seconds() / 60
    return pd.Series(np.nan, index=frame.index)


def memory_figure(runs: Union[Study, Sequence[Run]]) -> Optional[go.Figure]:
    """Accelerator memory allocated and process RSS over wall-clock time, one line per run."""
    groups = _by_variant(runs)
    colors = _colors([v for v, _ in groups])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("accelerator memory allocated (GB)", "process resident memory (GB)"))
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
    return _layout(fig, "Memory over time (one line per run)", height=520)


def throughput_figure(runs: Union[Study, Sequence[Run]], smoothing: float = 0.6) -> Optional[go.Figure]:
    """Training throughput (clips per second) over steps, smoothed mean over seeds with a min–max band."""
    groups = _by_variant(runs)
    colors = _colors([v for v, _ in groups])
    fig = go.Figure()
    for variant, variant_runs in groups:
        curves = _seed_curves(variant_runs, "training", "clips_per_s", smoothing)
        if curves.empty:
            continue
        _add_mean_curve(fig, curves, colors[variant], variant, variant)
    if not fig.data:
        return None
    return _layout(fig, "Throughput", xaxis_title="optimizer step", yaxis_title="clips per second")


def metric_bars_figure(study: Study) -> Optional[go.Figure]:
    """One panel per metric: the mean per variant with its 95% interval as error bars (none where n=1)."""
    estimates = metric_estimates(study)
    if estimates.empty:
        return None
    metrics = available_metrics(study)
    cols = 3
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[m.title for m in metrics], vertical_spacing=0.5 / rows)
    colors = _colors(study.variants_with_results)
    for i, metric in enumerate(metrics):
        part = estimates[estimates["metric"] == metric.key]
        for _, row in part.iterrows():
            half = (row["ci_high"] - row["ci_low"]) / 2 if row["n"] >= 2 else None
            fig.add_trace(go.Bar(x=[row["variant"]], y=[row["mean"]], name=row["variant"], legendgroup=row["variant"],
                                 showlegend=i == 0, marker_color=colors[row["variant"]],
                                 error_y=dict(type="data", array=[half], visible=half is not None),
                                 hovertext=f"{row['display']} (n={row['n']})", hoverinfo="text"),
                          row=i // cols + 1, col=i % cols + 1)
    return _layout(fig, "Metrics per variant: mean over seeds, error bars = 95% interval (none where n=1)",
                   height=260 * rows + 80, barmode="group")


def change_vs_baseline(study: Study, baseline: str = BASELINE) -> pd.DataFrame:
    """Per (variant, metric): percent change of the mean vs the baseline's, and the Welch interval in percent."""
    values = study.values
    rows = []
    if baseline not in study.variants_with_results:
        return pd.DataFrame(rows, columns=["variant", "metric", "label", "better", "percent", "low", "high", "difference"])
    base = values[values["variant"] == baseline]
    for metric in available_metrics(study, values):
        reference = _finite(base[metric.key])
        if len(reference) == 0 or reference.mean() == 0:
            continue
        scale = 100 / abs(reference.mean())
        for variant in study.variants_with_results:
            if variant == baseline:
                continue
            d = welch_difference(values.loc[values["variant"] == variant, metric.key], base[metric.key])
            if not math.isfinite(d.diff):
                continue
            rows.append({"variant": variant, "metric": metric.key, "label": metric.title, "better": metric.better or "",
                         "percent": d.diff * scale, "low": d.low * scale, "high": d.high * scale,
                         "difference": format_difference(d)})
    return pd.DataFrame(rows, columns=["variant", "metric", "label", "better", "percent", "low", "high", "difference"])


def change_figure(study: Study, baseline: str = BASELINE) -> Optional[go.Figure]:
    """Horizontal bars: each variant's change vs the baseline in percent, error bars from Welch's interval."""
    change = change_vs_baseline(study, baseline)
    if change.empty:
        return None
    colors = _colors(study.variants_with_results)
    fig = go.Figure()
    for variant, part in change.groupby("variant", sort=False):
        has = part["low"].notna()
        fig.add_trace(go.Bar(
            y=part["label"], x=part["percent"], orientation="h", name=variant, marker_color=colors[variant],
            error_x=dict(type="data", symmetric=False, array=(part["high"] - part["percent"]).where(has).tolist(),
                         arrayminus=(part["percent"] - part["low"]).where(has).tolist()),
            hovertext=part["difference"], hoverinfo="text+x"))
    fig.add_vline(x=0, line_color="grey")
    return _layout(fig, f"Change versus {baseline} (%), error bars = 95% Welch interval (none with one seed)",
                   xaxis_title="percent change of the mean", height=120 + 28 * len(change), barmode="group",
                   yaxis=dict(autorange="reversed"))


# ----------------------------------------------------------------------------------------------- samples
def gif_data_uri(path: Union[str, Path]) -> str:
    """A GIF file as a data URI, so the HTML needs no file next to it."""
    return "data:image/gif;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _sample_entries(run: Run) -> list:
    """samples.json entries whose GIF exists; without samples.json, every GIF in samples/ (prompt unknown)."""
    folder = run.folder / "samples"
    entries = run.samples or [{"file": p.name, "prompt": p.stem, "step": None, "weights": None}
                              for p in sorted(folder.glob("*.gif"))]
    plain = [e for e in entries if isinstance(e, dict) and Path(str(e.get("file", ""))).name == e.get("file")]
    return [e for e in plain if (folder / e["file"]).is_file()]  # a name, not a path: nothing outside samples/


def latest_samples(run: Run) -> dict:
    """prompt -> entry: the latest step's samples, of the deployed weights where there are such."""
    entries = _sample_entries(run)
    deployed = [e for e in entries if e.get("weights") == run.deployed_weights]
    entries = deployed or entries
    if not entries:
        return {}
    last = max((e.get("step") or 0) for e in entries)
    return {str(e.get("prompt")): e for e in entries if (e.get("step") or 0) == last}


def _img(run: Run, entry: dict, caption: str) -> str:
    uri = gif_data_uri(run.folder / "samples" / entry["file"])
    text = html.escape(caption)
    return (f'<figure style="display:inline-block;margin:4px;text-align:center">'
            f'<img src="{uri}" alt="{text}" style="width:128px;image-rendering:pixelated">'
            f'<figcaption style="font-size:small;max-width:160px">{text}</figcaption></figure>')


def samples_html(study: Study) -> Optional[str]:
    """A prompt × variant grid of animated GIFs (latest step, deployed weights, lowest finished seed)."""
    chosen = {v: study.runs_of(v)[0] for v in study.variants_with_results}
    picked = {v: latest_samples(run) for v, run in chosen.items()}
    prompts = list(dict.fromkeys(p for samples in picked.values() for p in samples))
    if not prompts:
        return None
    head = "".join(
        f"<th>{html.escape(v)}<br><small>{html.escape(chosen[v].name)}, {html.escape(chosen[v].deployed_weights)} "
        f"weights</small></th>" for v in picked)
    body = ""
    for prompt in prompts:
        cells = ""
        for variant, samples in picked.items():
            entry = samples.get(prompt)
            cells += "<td>" + (_img(chosen[variant], entry, f"step {entry.get('step')}") if entry else "—") + "</td>"
        body += f"<tr><th style='max-width:220px;text-align:left'>{html.escape(prompt)}</th>{cells}</tr>"
    return f"<table><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def run_samples_html(run: Run, last_steps: int = 3) -> Optional[str]:
    """One run's samples of its last few sampling steps, each captioned 'step · weights · prompt'."""
    entries = _sample_entries(run)
    steps = sorted({e.get("step") or 0 for e in entries})[-last_steps:]
    entries = [e for e in entries if (e.get("step") or 0) in steps]
    if not entries:
        return None
    figures = [_img(run, e, f"step {e.get('step')} · {e.get('weights')} · {e.get('prompt')}") for e in entries]
    return "<div>" + "".join(figures) + "</div>"


# ----------------------------------------------------------------------------------------------- findings
@dataclass
class Finding:
    question: str
    answer: str  # the verdict on the primary metric, in words
    table: pd.DataFrame  # every comparison behind it, one row per (comparison, metric)


def _values(study: Study, variant: str, key: str) -> pd.Series:
    values = study.values
    if values.empty or key not in values:
        return pd.Series(dtype=float)
    return values.loc[values["variant"] == variant, key]


def _verdict(d: Difference, metric: Metric, change: str) -> str:
    """The answer to "does <change> help?" for d = mean(with it) - mean(without it): sign and interval decide."""
    if not math.isfinite(d.diff):
        return "Cannot tell: no values to compare"
    if metric.better is None:
        return f"{change} changes it by {d.diff:+.4g} (neither direction is better)"
    effect = "helps" if (d.diff < 0) == (metric.better == "lower") else "hurts"
    if d.significant is None:
        return f"Indicative only: {change} {effect} here, but a single seed gives no interval"
    if not d.significant:
        return f"Not shown: {change} {effect} on average, but the 95% interval spans zero (not significant)"
    return f"{'Yes' if effect == 'helps' else 'No'}: {change} {effect} (significant)"


def _row(comparison: str, metric: Metric, d: Difference) -> dict:
    """One table row: the first-named side of `comparison` is better / worse / not significantly different."""
    if metric.better is None or not math.isfinite(d.diff):
        called = "neither direction is better" if math.isfinite(d.diff) else "—"
    else:
        side = "better" if (d.diff < 0) == (metric.better == "lower") else "worse"
        called = {None: f"{side} (no interval)", False: "not significant", True: f"{side} (significant)"}[d.significant]
    sizes = f"{d.method}, n={d.n_a}" if d.method == "paired" else f"{d.method}, n={d.n_a} vs {d.n_b}"
    if not math.isfinite(d.diff):
        return {"comparison": comparison, "metric": metric.title, "difference": "unavailable", "95% interval": "—",
                "test": sizes, "verdict": _no_values(comparison, d)}
    return {"comparison": comparison, "metric": metric.title, "difference": f"{d.diff:+.4g}",
            "95% interval": f"[{d.low:+.4g}, {d.high:+.4g}]" if d.has_interval else "none (a single seed)",
            "test": sizes, "verdict": called}


def _no_values(comparison: str, d: Difference) -> str:
    """Why a difference could not be computed: which side of 'a − b' has no values (see the unavailable metrics)."""
    sides = [s.strip() for s in comparison.split("−")] if d.method != "paired" else []
    if len(sides) == 2 and (d.n_a == 0) != (d.n_b == 0):
        return f"cannot compare: no values for {sides[0] if d.n_a == 0 else sides[1]} (see the unavailable metrics)"
    return "cannot compare: unavailable on both sides (see the unavailable metrics)"


def _missing(study: Study, variants: Sequence[str]) -> list:
    return [v for v in variants if v not in study.variants_with_results]


def _between(study: Study, a: str, b: str, metric: Metric) -> Difference:
    return welch_difference(_values(study, a, metric.key), _values(study, b, metric.key))


def _within(runs: Sequence[Run], metric: Metric) -> Difference:
    """EMA minus raw weights of the same runs, paired by run."""
    if metric.source == "training":
        ema = [_number(r.summary.get("val_loss_ema")) for r in runs]
        raw = [_number(r.summary.get("val_loss_raw")) for r in runs]
    else:
        ema = [_number(evaluation_row(r, "ema").get(metric.key)) for r in runs]
        raw = [_number(evaluation_row(r, "raw").get(metric.key)) for r in runs]
    return paired_difference(ema, raw)


def _sentence(verdict: str, metric: Metric, comparison: str, d: Difference) -> str:
    return f"{verdict}. {metric.label.capitalize()}, {comparison}: {format_difference(d, verdict=False)}."


def _text_encoder_finding(study: Study, metrics: list) -> Finding:
    question = "Does unfreezing the text encoder help? (text_finetuned vs baseline)"
    absent = _missing(study, ["text_finetuned", BASELINE])
    if absent:
        return Finding(question, f"Cannot answer: no finished run of {', '.join(absent)}.", pd.DataFrame())
    comparison = "text_finetuned − baseline"
    rows = [_row(comparison, m, _between(study, "text_finetuned", BASELINE, m)) for m in metrics]
    d = _between(study, "text_finetuned", BASELINE, metrics[0])
    return Finding(question, _sentence(_verdict(d, metrics[0], "unfreezing the text encoder"), metrics[0], comparison, d),
                   pd.DataFrame(rows))


def _ema_finding(study: Study, metrics: list) -> Finding:
    question = "Is EMA important? (baseline with EMA vs no_ema; EMA vs raw weights within each run)"
    sentences, rows = [], []
    absent = _missing(study, [BASELINE, "no_ema"])
    if absent:
        sentences.append(f"Across variants: cannot answer, no finished run of {', '.join(absent)}.")
    else:
        comparison = "baseline − no_ema"
        d = _between(study, BASELINE, "no_ema", metrics[0])
        sentences.append("Across variants: " + _sentence(_verdict(d, metrics[0], "EMA"), metrics[0], comparison, d))
        rows += [_row(comparison, m, _between(study, BASELINE, "no_ema", m)) for m in metrics]
    within = [Metric(PRIMARY, "validation loss", "lower", "training")] + metrics[1:]
    for variant in study.variants_with_results:
        runs = [r for r in study.runs_of(variant) if r.deployed_weights == "ema"]
        comparison = f"EMA − raw weights, {variant} runs"
        d = _within(runs, within[0])
        if math.isfinite(d.diff):
            sentences.append(f"Within {variant} runs: " + _sentence(_verdict(d, within[0], "EMA"), within[0], comparison, d))
        rows += [_row(comparison, m, _within(runs, m)) for m in within if math.isfinite(_within(runs, m).diff)]
    return Finding(question, " ".join(sentences), pd.DataFrame(rows))


def _best_finding(study: Study, metrics: list) -> Finding:
    question = "Which configuration is best?"
    rows = []
    for metric in (m for m in metrics if m.better):
        means = {v: _finite(_values(study, v, metric.key)) for v in study.variants_with_results}
        ranked = sorted((v for v in means if len(means[v])), key=lambda v: means[v].mean(),
                        reverse=metric.better == "higher")
        if not ranked:
            continue
        row = {"metric": metric.title, "best": ranked[0], "its mean": format_estimate(mean_ci(means[ranked[0]])),
               "runner-up": "—", "difference": "—", "95% interval": "—", "verdict": "no other variant to rank against"}
        if len(ranked) > 1:
            d = welch_difference(means[ranked[0]], means[ranked[1]])
            row.update({k: v for k, v in _row("", metric, d).items() if k in ("difference", "95% interval", "verdict")})
            row["runner-up"] = ranked[1]
            row["verdict"] = {True: "a clear win (significant)", False: "not a clear win (not significant)",
                              None: "indicative only (no interval)"}[d.significant]
        rows.append(row)
    if not rows:
        return Finding(question, "Cannot answer: no finished run has a validation loss.", pd.DataFrame())
    first = rows[0]
    answer = f"By the primary metric ({metrics[0].label}), {first['best']} is best: {first['its mean']}"
    answer += (f"; versus the runner-up {first['runner-up']}: {first['difference']} {first['95% interval']}, "
               f"{first['verdict']}." if first["runner-up"] != "—" else "; no other variant has finished runs.")
    return Finding(question, answer, pd.DataFrame(rows))


def findings(study: Study) -> list:
    """The three questions of the ablation, answered from the numbers with their uncertainty.

    The primary metric is validation loss of the deployed weights; evaluation metrics, where present, are compared
    the same way in each finding's table.
    """
    primary = next(m for m in TRAINING_METRICS if m.key == PRIMARY)
    metrics = [primary] + [m for m in available_metrics(study) if m.source == "evaluation"]
    return [_text_encoder_finding(study, metrics), _ema_finding(study, metrics), _best_finding(study, metrics)]


def findings_html(study: Study) -> str:
    if not study.finished_runs:
        return "<p><em>No finished runs, so there is nothing to conclude yet.</em></p>"
    notes = [f"Primary metric: {TRAINING_METRICS[0].label}, lower is better. Differences between variants come with "
             "a 95% Welch interval over seeds (EMA vs raw weights of the same runs: a paired interval); an interval "
             "that spans zero is called not significant, and a single seed gives no interval."]
    if not evaluation_metrics(study):
        notes.append("No evaluation metrics were available, so only validation loss is compared.")
    if study.is_partial:
        notes.append("This is a partial study (see the run status above): the answers use only the finished runs.")
    parts = [f"<p><em>{html.escape(n)}</em></p>" for n in notes]
    for finding in findings(study):
        parts.append(f"<h3>{html.escape(finding.question)}</h3><p>{html.escape(finding.answer)}</p>")
        if not finding.table.empty:
            parts.append(_frame_html(finding.table))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- provenance
def public_text(text: str) -> str:
    """Text for a shared report: the project folder and the home folder are not spelled out."""
    text = str(text).replace(str(PROJECT_ROOT) + os.sep, "").replace(str(PROJECT_ROOT), ".")
    return text.replace(str(Path.home()), "~")


def relative_link(path: Union[str, Path], reports_dir: Union[str, Path]) -> str:
    """`path` relative to the report's folder (the HTML lies in reports_dir), with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), Path(reports_dir).resolve())).as_posix()


def config_differences(study: Study, baseline: str = BASELINE) -> pd.DataFrame:
    """Per variant, the config keys whose value differs from the reference (baseline, or the first variant)."""
    configs = {v: study.runs_of(v)[0].config for v in study.variants_with_results if study.runs_of(v)[0].config}
    if not configs:
        return pd.DataFrame(columns=["variant", "key", "reference", "value"])
    reference = baseline if baseline in configs else next(iter(configs))
    ignored = {"variant", "description", "seed"}
    rows = []
    for variant, config in configs.items():
        if variant == reference:
            continue
        for key in sorted(set(config) | set(configs[reference])):
            if key not in ignored and config.get(key) != configs[reference].get(key):
                rows.append({"variant": variant, "key": key, "reference": str(configs[reference].get(key)),
                             "value": str(config.get(key))})
    frame = pd.DataFrame(rows, columns=["variant", "key", "reference", "value"])
    return frame.rename(columns={"reference": f"{reference} value"})


def unavailable_metrics(study: Study) -> pd.DataFrame:
    """Every metric some run could not compute, with the reason from its *_status column and the runs affected."""
    rows = []
    for run in study.finished_runs:
        if run.evaluation.empty:
            rows.append({"metric": "(all evaluation metrics)", "weights": "", "reason": "no logs/evaluation_metrics.csv",
                         "run": run.name})
            continue
        for _, record in run.evaluation.iterrows():
            for column in run.evaluation.columns:
                if not column.endswith("_status"):
                    continue
                reason = record[column]
                if isinstance(reason, str) and reason != "ok" or (not isinstance(reason, str) and pd.notna(reason)):
                    rows.append({"metric": column[: -len("_status")], "weights": str(record.get("weights", "")),
                                 "reason": public_text(reason), "run": run.name})
    frame = pd.DataFrame(rows, columns=["metric", "weights", "reason", "run"])
    if frame.empty:
        return frame
    grouped = frame.groupby(["metric", "reason"], sort=False).agg(
        weights=("weights", lambda s: ", ".join(sorted(set(filter(None, s))))),
        runs=("run", lambda s: ", ".join(dict.fromkeys(s))))
    return grouped.reset_index()[["metric", "weights", "reason", "runs"]]


def _hardware(study: Study) -> pd.DataFrame:
    keys = ["host", "device_name", "world_size", "effective_batch_size", "torch_version", "cuda_version", "git_commit"]
    rows = [{"run": r.name, **{k: r.metadata.get(k) for k in keys}} for r in study.runs if r.metadata]
    return pd.DataFrame(rows, columns=["run"] + keys).fillna("—")


def _packages(study: Study) -> pd.DataFrame:
    versions = {r.name: r.metadata.get("packages") or {} for r in study.finished_runs}
    frame = pd.DataFrame(versions).sort_index()
    if frame.empty:
        return frame
    if frame.nunique(axis=1, dropna=False).eq(1).all():  # the same everywhere: one column
        return frame.iloc[:, [0]].set_axis(["version (all runs)"], axis=1)
    return frame.fillna("—")


def _split(study: Study) -> pd.DataFrame:
    def shown(value):  # signers may be counted or listed
        if isinstance(value, list):
            return f"{len(value)}: " + ", ".join(map(str, value[:4])) + (", …" if len(value) > 4 else "")
        return value

    keys = ["mode", "train_clips", "val_clips", "train_signers", "val_signers", "num_skipped"]
    rows = [{"run": r.name, **{k: shown((r.metadata.get("split") or {}).get(k)) for k in keys}}
            for r in study.finished_runs]
    return pd.DataFrame(rows, columns=["run"] + keys)


def files_html(paths: Iterable[Path], reports_dir: Union[str, Path], label: str) -> Optional[str]:
    """'<label>: a, b' with each file linked relative to the report; None for no files."""
    links = [f'<a href="{html.escape(relative_link(p, reports_dir))}">{html.escape(relative_link(p, reports_dir))}</a>'
             for p in paths]
    return f"<p>{html.escape(label)}: {', '.join(links)}</p>" if links else None


def _frame_html(frame: pd.DataFrame, index: bool = False) -> str:
    return frame.to_html(index=index, escape=True, na_rep="—", border=0, classes="dataframe")


def provenance_html(study: Study, reports_dir: Union[str, Path] = "reports") -> str:
    """Code version, config differences, data split, hardware, packages, notebooks, and unavailable metrics."""
    e = html.escape
    commits = sorted({str(r.metadata.get("git_commit")) for r in study.runs if r.metadata.get("git_commit")})
    parts = [f"<p><b>Git commit{'s' if len(commits) > 1 else ''}:</b> {e(', '.join(commits) or 'not recorded')}"
             + (" — the runs come from different code versions!" if len(commits) > 1 else "") + "</p>"]

    differences = config_differences(study)
    parts.append("<h3>Configuration: each variant as a difference from the baseline</h3>")
    parts.append(_frame_html(differences) if not differences.empty else "<p>No differences to show.</p>")

    unavailable = unavailable_metrics(study)
    parts.append("<h3>Metrics that could not be computed</h3>")
    parts.append(_frame_html(unavailable) if not unavailable.empty else "<p>None: every metric was computed.</p>")

    for title, frame in (("Data split", _split(study)), ("Hardware and software", _hardware(study)),
                         ("Package versions", _packages(study))):
        if not frame.empty:
            parts.append(f"<h3>{e(title)}</h3>" + _frame_html(frame, index=title == "Package versions"))

    links = [f'<li><a href="{e(relative_link(r.notebook, reports_dir))}">{e(relative_link(r.notebook, reports_dir))}</a>'
             f" — {e(r.status)}</li>" for r in study.runs if r.notebook.exists()]
    analysis = study.folder / "analysis.ipynb"
    parts.append("<h3>Executed notebooks</h3><ul>" + "".join(links) + "</ul>" if links else "")
    parts.append(f"<p>This page was exported from {e(relative_link(analysis, reports_dir))}. For interactive controls "
                 f"(variant, metric, prompt), open notebooks/analysis.ipynb in JupyterLab with study = "
                 f"{e(repr(study.name))} and run all cells.</p>")
    return "\n".join(p for p in parts if p)


def overview_html(study: Study, reports_dir: Union[str, Path] = "reports") -> str:
    """What the study holds: finished, failed, missing runs, and whether the report is partial or empty."""
    e = html.escape
    folder = relative_link(study.folder, reports_dir)
    finished = study.finished_runs
    head = f"<h2>Study {e(study.name)}</h2>"
    if not study.runs:
        where = "has no runs" if study.folder.is_dir() else "does not exist"
        return head + (f"<p><b>No finished run:</b> the study folder {e(folder)} {where}, so there is nothing to "
                       "compare yet. Run <code>python -m t2s ablate</code> first.</p>")
    total = len({f"{v}-seed{k}" for v, k in study.expected} | {r.name for r in study.runs})
    lines = [f"{len(finished)} of {total} runs finished, over variants: {', '.join(study.variants)}."]
    if not finished:
        lines.append("No finished run: there is nothing to compare yet; the runs below say why.")
    elif study.is_partial:
        lines.append("This is a partial study: the tables and findings use only the finished runs.")
    for variant in study.variants_without_results:
        lines.append(f"Variant {variant} has no finished run.")
    if study.missing:
        lines.append(f"Runs not started (no folder, no notebook): {', '.join(study.missing)}.")
    for run in study.unfinished_runs:
        link = relative_link(run.notebook, reports_dir) if run.notebook.exists() else "no notebook"
        lines.append(f"Run {run.name}: {run.status} ({link})" + (f": {public_text(run.error)}" if run.error else "."))
    for owner, problems in [(study.name, study.problems)] + [(r.name, r.problems) for r in study.runs]:
        lines += [f"Could not read a file of {owner}: {public_text(problem)}" for problem in problems]
    table = status_table(study, reports_dir)
    return head + "".join(f"<p>{e(line)}</p>" for line in lines) + _frame_html(table)


# ----------------------------------------------------------------------------------------------- notebook display
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
