"""The trackers beside the run directory: MLflow, W&B and Aim through accelerate's tracker classes (TensorBoard is the
run log's own, `t2s.engine.logs`). What the report holds reaches them: the config, the training and validation
scalars (while training), the evaluation metrics of every weight set and the evaluation clips with their index (after
evaluation), the sample clips; a derived run is its own tracker run, marked as derived from its provider.

A run's tracker runs are recorded in metadata.json (`tracker_runs`: {tracker: id}), so that the evaluation, which runs
later (in the notebook, or `python -m t2s evaluate`), adds to the same tracker run instead of opening a new one.
The experiment is the study folder's name; a tracker run is named after the run directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from t2s.config import Config, check_trackers
from t2s.rundir import RunDir


def accelerate_trackers(cfg: Config) -> list[str]:
    """The config's trackers that accelerate runs (all but tensorboard, which the run log writes itself), each
    checked to be usable here (`t2s.config.check_trackers`: its package, MLflow's store)."""
    check_trackers(cfg)
    return [t for t in cfg.trackers if t != "tensorboard"]


def _run_id(tracker) -> Optional[str]:
    """The id a tracker gives the run it opened (MLflow: run_id; W&B: id; Aim: hash)."""
    inner = tracker.tracker
    for path in (("info", "run_id"), ("id",), ("hash",)):
        value = inner
        for attribute in path:
            value = getattr(value, attribute, None)
        if isinstance(value, str):
            return value
    return None


def start_trackers(accelerator: Accelerator, cfg: Config, run: RunDir) -> None:
    """Start accelerate's trackers (if any) for a run, with the resolved config as parameters, and record their run
    ids in metadata.json; a resumed run reopens the tracker runs it recorded."""
    if not accelerator.log_with:
        return
    name, known = run.root.name, run.read_metadata().get("tracker_runs") or {}
    resume = {"mlflow": {"run_name": name, **({"run_id": known["mlflow"]} if "mlflow" in known else {})},
              "wandb": {"name": name, **({"id": known["wandb"], "resume": "allow"} if "wandb" in known else {})},
              "aim": {"run_hash": known["aim"]} if "aim" in known else {}}
    accelerator.init_trackers(run.root.parent.name or "t2s", config=_flat(cfg.to_dict()), init_kwargs=resume)
    if accelerator.is_main_process:
        ids = {t.name: _run_id(t) for t in accelerator.trackers}
        run.update_metadata(tracker_runs={k: v for k, v in ids.items() if v})


def log_samples(accelerator: Accelerator, run: RunDir) -> None:
    """The run's training samples (GIFs and samples.json) as artifacts of its tracker runs, once training ends."""
    for tracker in accelerator.trackers:
        _log_files(tracker.name, tracker, run.samples, run.samples.name)


def finish_trackers(accelerator: Accelerator) -> None:
    """End accelerate's trackers (the MLflow run is marked finished). Not `Accelerator.end_training`: it also destroys
    the process group, which a data-parallel `train()` still needs to wait for its processes."""
    for tracker in accelerator.trackers:
        tracker.finish()


def _flat(config: dict) -> dict:
    """Tracker parameters: numbers, strings and booleans as they are; lists and None as their text."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}


def _opened(cfg: Config, run: RunDir, tags: Optional[dict] = None) -> Iterator:
    """Each of the run's trackers, reopened on the tracker run recorded in metadata.json (a new one, recorded, where
    there is none: a derived run, or a run trained before its trackers were configured)."""
    known = run.read_metadata().get("tracker_runs") or {}
    experiment, name = run.root.parent.name or "t2s", run.root.name
    for kind in accelerate_trackers(cfg):
        if kind == "mlflow":
            tracker = LOGGER_TYPE_TO_CLASS[kind](experiment, run_id=known.get(kind), run_name=name, tags=tags)
        elif kind == "wandb":
            tracker = LOGGER_TYPE_TO_CLASS[kind](experiment, name=name, id=known.get(kind), resume="allow",
                                                 tags=list((tags or {}).values()) or None)
        else:
            tracker = LOGGER_TYPE_TO_CLASS[kind](name, run_hash=known[kind]) if kind in known else \
                LOGGER_TYPE_TO_CLASS[kind](name)
        tracker.start()
        if kind not in known:
            known[kind] = _run_id(tracker)
            run.update_metadata(tracker_runs=known)
        yield kind, tracker


def _log_files(kind: str, tracker, folder: Path, artifact_path: str) -> None:
    """A folder's files as the tracker run's artifacts (MLflow: artifacts; W&B: saved files; Aim: logged artifacts,
    where its storage is configured)."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if kind == "mlflow":
        tracker.log_artifacts(str(folder), artifact_path)
    elif kind == "wandb":
        tracker.tracker.save(str(folder / "*"), base_path=str(folder.parent), policy="now")
    elif hasattr(tracker.tracker, "log_artifact"):
        for path in sorted(folder.iterdir()):
            tracker.tracker.log_artifact(str(path), name=f"{artifact_path}/{path.name}")


def publish_evaluation(cfg: Config, run: RunDir, rows: list[dict], step: int, folder: Path, part: str) -> None:
    """An evaluation's numbers (`eval/<weights>/<metric>`, or `eval_dev/...` for the development part) and its clips
    with their index, and the run's training samples, sent to each configured tracker's run of this run."""
    prefix = "eval" if part == "test" else f"eval_{part}"
    for kind, tracker in _opened(cfg, run):
        try:
            for row in rows:
                values = {f"{prefix}/{row['weights']}/{k}": float(v) for k, v in row.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("num_clips")}
                tracker.log(values, step=step)
            _log_files(kind, tracker, folder, folder.name)
            _log_files(kind, tracker, run.samples, run.samples.name)
        finally:
            tracker.finish()


def publish_derived(cfg: Config, run: RunDir, provider: RunDir, rows: dict[str, list[dict]]) -> None:
    """A derived run as its own tracker run: its config as parameters, tagged with the run it was derived from,
    and the training and validation scalars it shares with that run (`rows`: {"train": [...], "val": [...]})."""
    tags = {"derived_from": provider.root.name}
    for kind, tracker in _opened(cfg, run, tags):
        try:
            tracker.store_init_configuration({**_flat(cfg.to_dict()), "derived_from": provider.root.name})
            for row in rows.get("train", []):
                tracker.log({"train/loss": row["loss"], "train/lr": row["lr"]}, step=int(row["step"]))
            for row in rows.get("val", []):
                tracker.log({"val/loss_raw": row["val_loss_raw"]}, step=int(row["step"]))
            _log_files(kind, tracker, run.samples, run.samples.name)
        finally:
            tracker.finish()
