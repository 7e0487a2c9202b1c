"""Tables for the report: per-variant estimates, the comparison table (also written as CSV/Markdown), run status."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from t2s.config import PROJECT_ROOT
from t2s.report.load import Run, Study, available_metrics
from t2s.report.stats import CONFIDENCE, format_estimate, mean_ci
from t2s.rundir import COMPARISON_TABLE, finite_number


def public_text(text: str) -> str:
    """Text for a shared report: the project folder and the home folder are not spelled out."""
    text = str(text).replace(str(PROJECT_ROOT) + os.sep, "").replace(str(PROJECT_ROOT), ".")
    return text.replace(str(Path.home()), "~")


def relative_link(path: Union[str, Path], reports_dir: Union[str, Path]) -> str:
    """`path` relative to the report's folder (the HTML lies in reports_dir), with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), Path(reports_dir).resolve())).as_posix()


def frame_html(frame: pd.DataFrame, index: bool = False) -> str:
    return frame.to_html(index=index, escape=True, na_rep="—", border=0, classes="dataframe")


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
                "display": cell_text(estimate),
            })
    columns = ["variant", "metric", "label", "better", "mean", "ci_low", "ci_high", "n", "display"]
    return pd.DataFrame(rows, columns=columns)


def cell_text(estimate) -> str:
    """`format_estimate` with the cell's own n (a metric can be missing in some seeds: its n is then smaller than the
    'seeds (n)' row's)."""
    text = format_estimate(estimate)
    return text if estimate.n <= 1 or not estimate.spread else f"{text} (n={estimate.n})"


def comparison_table(study: Study) -> Optional[pd.DataFrame]:
    """Metrics as rows, variants as columns, each cell 'mean ± 95% CI half-width (n=seeds)'; None if no runs."""
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
    paths = {"csv": folder / f"{COMPARISON_TABLE}.csv", "md": folder / f"{COMPARISON_TABLE}.md"}
    metric_estimates(study).to_csv(paths["csv"], index=False)
    note = (f"Mean ± half-width of the {CONFIDENCE:.0%} Student-t interval over the n seeds with a value; n=1 gives "
            "no interval. "
            "↓ lower is better, ↑ higher is better.\n\n")
    paths["md"].write_text(f"# Study {study.name}: comparison\n\n{note}{markdown_table(table)}", encoding="utf-8")
    return paths


def status_table(study: Study, reports_dir: Union[str, Path] = "reports") -> pd.DataFrame:
    """Every run: status, steps, time, the notebook (a path relative to the report) and the error if any."""
    rows = []
    for run in study.runs:
        rows.append({
            "run": run.name, "variant": run.variant, "seed": run.seed, "status": run.status,
            "steps": str(run.summary.get("steps", "—")), "hours": finite_number(run.summary.get("train_time_hours")),
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
