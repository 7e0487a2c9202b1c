"""Where a study's wall time goes: `python -m t2s bench --profile STUDY [--label avx2-fp32]`.

Reads what a study already records, runs nothing:
* each run's executed notebook (papermill's start time and every cell's duration): the kernel's start, the imports
  cell, the training cell, the evaluation cell, the cells that draw the figures;
* each run's `logs/phases.json` (`t2s.engine.phases`): inside the training cell setup (data, models, text encoder),
  optimizer steps, validation, sampling, checkpoints; inside the evaluation cell its setup, the recognizer, sampling,
  FVD, metrics, the held-out loss, writing;
* `executed/<study>/phases.json` (`t2s.study.ablate`): the runs' wall time as the study saw it, with its jobs, and
  the report's.
Writes `reports/bench/profile-<label>.json` and `.md`, and the profile's section of `reports/bench/bench.md`
(`report.refresh_sections`).
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Optional, Union

from t2s.bench.timing import cpu_model
from t2s.rundir import STUDY_PHASES_FILE, RunDir, read_json

TRAINING_PHASES = ("setup", "steps", "validation", "sampling", "checkpoints")
EVALUATION_PHASES = ("eval_setup", "recognizer", "eval_sampling", "fvd", "metrics", "held_out_loss", "eval_writing")
COLUMNS = ("kernel start", "imports", *TRAINING_PHASES, "training, other", *EVALUATION_PHASES, "evaluation, other",
           "figures", "notebook")


def _time(text: Optional[str]) -> Optional[float]:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def notebook_cells(path: Path) -> dict:
    """{kernel start, imports, training, evaluation, figures, notebook}: seconds from an executed notebook."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("papermill", {})
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    out = dict.fromkeys(("kernel start", "imports", "training", "evaluation", "figures"), 0.0)
    first = next((_time(c["metadata"].get("papermill", {}).get("start_time")) for c in cells
                  if c["metadata"].get("papermill", {}).get("start_time")), None)
    if first is not None and meta.get("start_time"):
        out["kernel start"] = max(0.0, first - _time(meta["start_time"]))
    for cell in cells:
        source = "".join(cell.get("source", ""))
        seconds = float(cell["metadata"].get("papermill", {}).get("duration") or 0.0)
        kind = ("training" if "train_processes" in source else "evaluation" if "evaluate_or_reuse" in source
                else "imports" if source.startswith("import ") else "figures")
        out[kind] += seconds
    out["notebook"] = float(meta.get("duration") or sum(out.values()))
    return out


def run_profile(run_dir: Path) -> dict:
    """One run's phases in seconds (COLUMNS), with its variant and what it ran on."""
    run = RunDir(run_dir)
    phases = read_json(run.phases, {}) or {}
    cells = notebook_cells(run.notebook) if run.notebook.is_file() else {}
    out = {"run": run.root.name, "kernel start": cells.get("kernel start"), "imports": cells.get("imports")}
    out.update({p: phases.get(p, 0.0) for p in TRAINING_PHASES + EVALUATION_PHASES})
    if cells:
        out["training, other"] = max(0.0, cells["training"] - sum(phases.get(p, 0.0) for p in TRAINING_PHASES))
        out["evaluation, other"] = max(0.0, cells["evaluation"] - sum(phases.get(p, 0.0) for p in EVALUATION_PHASES))
        out["figures"], out["notebook"] = cells["figures"], cells["notebook"]
    meta = run.read_metadata()
    out.update(mixed_precision=meta.get("mixed_precision"), torch_threads=meta.get("torch_threads"),
               derived=bool(meta.get("shared_training")))
    return out


def study_profile(study_dir: Union[str, Path], label: str) -> dict:
    """Every run's profile, the sums over runs by phase, and the study's wall time (runs, report)."""
    study_dir = Path(study_dir)
    runs = [run_profile(p) for p in sorted(study_dir.iterdir()) if (p / "config.json").is_file()]
    if not runs:
        raise FileNotFoundError(f"{study_dir} holds no run directory (a folder with config.json): run the study first")
    totals = {c: round(sum(r.get(c) or 0.0 for r in runs), 1) for c in COLUMNS}
    return {"label": label, "study": str(study_dir), "machine": platform.processor() or platform.machine(),
            "cpu": cpu_model(), "runs": runs, "sum_over_runs": totals,
            "study_wall": read_json(study_dir / STUDY_PHASES_FILE, None),
            "measured": _dt.datetime.now().isoformat(timespec="seconds")}


def _minutes(seconds) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def to_markdown(result: dict) -> str:
    """The profile as a section of bench.md: the study's wall time, then phases (rows) by run (columns)."""
    runs = result["runs"]
    wall = result.get("study_wall") or {}
    lines = [f"## Quickstart phase profile: {result['label']}", "",
             f"- study: `{Path(result['study']).name}`, profiled {result['measured']}; CPU: {result['cpu']}",
             f"- runs' mixed precision: {', '.join(sorted({str(r['mixed_precision']) for r in runs}))}; torch threads "
             f"per run: {', '.join(sorted({str(r['torch_threads']) for r in runs}))}"]
    if wall:
        lines.append(f"- study wall time (`ablate`, {wall.get('jobs')} runs at once): runs {_minutes(wall.get('runs'))}, "
                     f"report {_minutes(wall.get('report'))}, total **{_minutes(wall.get('wall'))}**")
    lines += ["", "| phase (seconds) | " + " | ".join(r["run"] + (" (derived)" if r["derived"] else "") for r in runs)
              + " | sum |", "|---|" + "---:|" * (len(runs) + 1)]
    for column in COLUMNS:
        cells = [f"{r[column]:.1f}" if r.get(column) is not None else "—" for r in runs]
        lines.append(f"| {column} | " + " | ".join(cells) + f" | {result['sum_over_runs'][column]:.1f} |")
    lines += ["", "Training phases are `logs/phases.json`'s (`t2s.engine.phases`); 'other' is the notebook cell's time "
              "outside them (building the trainer's bookkeeping, trackers, writing logs). The sum over runs exceeds "
              "the study's wall time by the runs that ran at once.", ""]
    return "\n".join(lines)
