"""HTML sections of the report: the study overview (run status) and provenance (code, config, data, hardware)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Iterable, Optional, Union

import pandas as pd

from t2s.report.load import BASELINE, Study, missing_values
from t2s.report.tables import frame_html, public_text, relative_link, status_table


def config_differences(study: Study, baseline: str = BASELINE) -> pd.DataFrame:
    """Per variant, the config keys whose value differs from the reference (baseline, or the first variant)."""
    configs = {v: study.runs_of(v)[0].config for v in study.variants_with_results if study.runs_of(v)[0].config}
    if not configs:
        return pd.DataFrame(columns=["variant", "key", "reference", "value"])
    reference = baseline if baseline in configs else next(iter(configs))
    ignored = {"variant", "description", "seed", "compare_to", "question", "primary_metric"}
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
        rows += [{"metric": metric, "weights": weights, "reason": reason, "run": run.name}
                 for metric, weights, reason in missing_values(run)]
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


def provenance_html(study: Study, reports_dir: Union[str, Path] = "reports") -> str:
    """Code version, config differences, data split, hardware, packages, notebooks, and unavailable metrics."""
    e = html.escape
    commits = sorted({str(r.metadata.get("git_commit")) for r in study.runs if r.metadata.get("git_commit")})
    parts = [f"<p><b>Git commit{'s' if len(commits) > 1 else ''}:</b> {e(', '.join(commits) or 'not recorded')}"
             + (" — the runs come from different code versions!" if len(commits) > 1 else "") + "</p>"]

    differences = config_differences(study)
    parts.append("<h3>Configuration: each variant as a difference from the baseline</h3>")
    parts.append(frame_html(differences) if not differences.empty else "<p>No differences to show.</p>")

    unavailable = unavailable_metrics(study)
    parts.append("<h3>Metrics that could not be computed</h3>")
    parts.append(frame_html(unavailable) if not unavailable.empty else "<p>None: every metric was computed.</p>")

    for title, frame in (("Data split", _split(study)), ("Hardware and software", _hardware(study)),
                         ("Package versions", _packages(study))):
        if not frame.empty:
            parts.append(f"<h3>{e(title)}</h3>" + frame_html(frame, index=title == "Package versions"))

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
    return head + "".join(f"<p>{e(line)}</p>" for line in lines) + frame_html(table)
