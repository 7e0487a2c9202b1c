"""Train each distinct configuration once: a variant whose training is another variant's shares it.

`baseline` and `no_ema` differ only in `use_ema`, and an EMA never feeds back into training: with the same seed their
raw weights, losses and samples are bit-identical. So a study trains the EMA variant once and *derives* the other
run directory from it (`derive_run`): the same logs and raw samples, the provider's final raw weights (and trained text
encoder) as its own `weights/` files, its latest checkpoint without the EMA and with the consumer's config only where
both keep optimizer state (`keep_optimizer_state`), a summary without EMA numbers, and `metadata.json` saying where the
weights come from (`weights_from`, `shared_training`). The derived run is then evaluated with its own settings; where
those equal the provider's, its raw evaluation row and clips are the provider's (`reuse_evaluation`), since they would
be recomputed bit for bit.

Rules (`shares_training`): the consumer keeps no EMA, the provider keeps one, and their resolved configs differ only in
`TRAINING_NEUTRAL` keys (the EMA's settings, the question a variant asks, evaluation and sampling settings used after
training, and what a finished run keeps on disk). Any other difference (a learning rate, the text encoder's freezing,
the seed) means two trainings.
`python -m t2s ablate --no-share` trains every run itself.

The training notebook and the command line go through `train_or_derive` and `evaluate_or_reuse`; `t2s.study.runs`
plans a study with `find_provider`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import pandas as pd
from torch.utils.tensorboard import SummaryWriter

from t2s.config import Config, load_config_file
from t2s.engine.checkpoint import (
    load_checkpoint,
    load_run_weights,
    prune_checkpoints,
    save_checkpoint,
    write_final_weights,
)
from t2s.engine.logs import ema_summary
from t2s.engine.runtime import now
from t2s.engine.train import RunResult, train
from t2s.engine.trackers import publish_derived
from t2s.eval.evaluate import evaluate_run
from t2s.eval.results import publish, write_rows
from t2s.rundir import CAPTION_SPLITS, RunDir, atomic_write_json, read_json

# Keys that do not change the raw weights' training trajectory (nor the data, the split or the held-out loss).
EMA_KEYS = {"use_ema", "ema_decay", "ema_update_every", "ema_warmup"}
QUESTION_KEYS = {"variant", "description", "compare_to", "question", "primary_metric"}
EVALUATION_KEYS = {"guidance_scale", "num_inference_steps", "eta", "eval_num_clips", "eval_batch_size",
                   "fvd_num_generated", "fvd_real_split", "bt_train_frames", "bt_epochs", "bt_seed", "resume_from"}
LOGGING_KEYS = {"trackers"}  # where the scalars go, not what they are
STORAGE_KEYS = {"keep_optimizer_state"}  # what a finished run keeps on disk
TRAINING_NEUTRAL = EMA_KEYS | QUESTION_KEYS | EVALUATION_KEYS | LOGGING_KEYS | STORAGE_KEYS


def differing_keys(a: dict, b: dict) -> set:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def shares_training(consumer: dict, provider: dict) -> bool:
    """Whether a run of config `consumer` may take its weights from a run of config `provider` (see module doc)."""
    return (not consumer.get("use_ema") and bool(provider.get("use_ema"))
            and not differing_keys(consumer, provider) - TRAINING_NEUTRAL)


def find_provider(config: Config, candidates: list) -> Optional[int]:
    """The index of the first candidate config (dicts) `config` may share the training of, else None."""
    mine = config.to_dict()
    return next((i for i, other in enumerate(candidates) if shares_training(mine, other)), None)


def why_not_shared(config: Config, provider: RunDir) -> Optional[str]:
    """None when `provider` is a finished run whose training `config` shares; else the reason, in words."""
    if read_json(provider.metadata, {}).get("status") != "finished":
        return f"{provider.root} has not finished"
    theirs = read_json(provider.config, None)
    if not isinstance(theirs, dict):
        return f"{provider.config} is missing or unreadable"
    if not shares_training(config.to_dict(), theirs):
        keys = sorted(differing_keys(config.to_dict(), theirs) - TRAINING_NEUTRAL)
        return f"its config differs in training keys {keys}" if keys else "the provider keeps no EMA or this run does"
    return None


def take_shared(config: Config, run: RunDir, provider: RunDir) -> Optional[dict]:
    """Derive `run` from `provider` when this config shares its training (returns the summary written); None, after
    saying why, when it cannot and the run trains itself, or when `run` has finished already."""
    if run.read_metadata().get("status") == "finished":
        return None  # train() finds it finished
    why = why_not_shared(config, provider)
    if why is None:
        summary = derive_run(config, run, provider)
        print(f"{config.run_name} shares the training of {provider.root.name}: its raw weights, logs and samples "
              f"are that run's (t2s.study.derived); nothing was trained")
        return summary
    print(f"{config.run_name} trains itself: it cannot share the training of {provider.root}: {why}")
    return None


def _without_ema_column(source: Path, target: Path, column: str) -> None:
    frame = pd.read_csv(source)
    if column in frame:
        frame[column] = float("nan")
    frame.to_csv(target, index=False)


def derive_run(config: Config, run: RunDir, provider: RunDir) -> dict:
    """Write `run` from the finished `provider` (see module doc); returns the summary written."""
    found = load_run_weights(provider)
    if found is None:
        raise FileNotFoundError(f"cannot share the training of {provider.root}: it has no final weights and no "
                                f"checkpoint verifies")
    run.make()
    atomic_write_json(run.config, config.to_dict())
    for source, target, column in ((provider.training_csv, run.training_csv, "ema_decay"),
                                   (provider.validation_csv, run.validation_csv, "val_loss_ema"),
                                   (provider.memory_csv, run.memory_csv, None)):
        if source.exists():
            _without_ema_column(source, target, column) if column else shutil.copyfile(source, target)
    step, path = found["step"], found["source"]
    digests = write_final_weights(run, {**found, "ema": None, "text_encoder_ema": None})
    if config.keep_optimizer_state and path.suffix == ".pt":  # the provider kept its optimizer state: so does this run
        state = {**load_checkpoint(path), "ema": None, "config": config.to_dict()}
        save_checkpoint(run, path.name, state, config.keep_checkpoints)
    else:
        prune_checkpoints(run)  # no optimizer state, nor an empty checkpoints/ folder
    samples = [e for e in read_json(provider.samples_json, []) or [] if e.get("weights") == "raw"]
    for entry in samples:
        shutil.copyfile(provider.samples / entry["file"], run.samples / entry["file"])
    atomic_write_json(run.samples_json, samples)
    summary = {**read_json(provider.summary, {}), "val_loss_ema": None, **ema_summary(None, step)}
    atomic_write_json(run.summary, summary)
    theirs = {k: v for k, v in read_json(provider.metadata, {}).items() if k != "tracker_runs"}  # its own runs
    shared = {"from": provider.root.name, "checkpoint": path.name, "step": step,
              "differing_keys": sorted(differing_keys(config.to_dict(), read_json(provider.config, {})))}
    run.update_metadata(**{**theirs, "status": "finished", "error": None, "start_time": now(), "end_time": now(),
                           "resumed_from": None, "weights_from": str(provider.root), "shared_training": shared,
                           "final_weights": digests})
    _publish_training(config, run, provider)
    run.write_progress("trained", step, step, "step")  # evaluation next, as a trained run
    return summary


def _publish_training(config: Config, run: RunDir, provider: RunDir) -> None:
    """The derived run in TensorBoard (its own folder: the shared training and validation scalars, and a note of where
    they come from, when `trackers` lists tensorboard) and in the other trackers (`publish_derived`)."""
    rows = {"train": pd.read_csv(run.training_csv).to_dict("records") if run.training_csv.exists() else [],
            "val": pd.read_csv(run.validation_csv).to_dict("records") if run.validation_csv.exists() else []}
    if "tensorboard" in config.trackers:
        writer = SummaryWriter(str(run.tensorboard))
        try:
            writer.add_text("derived_from", f"{run.root.name} shares the training of {provider.root.name}: these are "
                                            f"that run's scalars (t2s.study.derived)", 0)
            for row in rows["train"]:
                writer.add_scalar("train/loss", row["loss"], int(row["step"]))
                writer.add_scalar("train/lr", row["lr"], int(row["step"]))
            for row in rows["val"]:
                writer.add_scalar("val/loss_raw", row["val_loss_raw"], int(row["step"]))
        finally:
            writer.close()
    publish_derived(config, run, provider, rows)


def reuse_evaluation(run: RunDir, config: Config, weights: list) -> Optional[list]:
    """The provider's raw evaluation row (renamed for this run) and its clips, when this run shares its training,
    asks for raw weights only, and evaluates with the same settings; None otherwise (then evaluate as usual)."""
    meta = read_json(run.metadata, {})
    source = meta.get("weights_from")
    if not source or weights != ["raw"]:
        return None
    provider = RunDir(source)
    theirs = read_json(provider.config, {})
    if differing_keys(config.to_dict(), theirs) - EMA_KEYS - QUESTION_KEYS - STORAGE_KEYS:
        return None  # other evaluation settings: evaluate with this run's own
    rows = [r for r in read_json(provider.evaluation_json, []) or [] if r.get("weights") == "raw"]
    index = read_json(provider.evaluation_index, []) or []
    if len(rows) != 1 or not index:
        return None
    row = {**rows[0], "model_name": run.root.name, "config_name": config.variant}
    entries = [e for e in index if e.get("weights") in ("raw", "real")]
    run.evaluation.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        shutil.copyfile(provider.evaluation / entry["file"], run.evaluation / entry["file"])
    atomic_write_json(run.evaluation_index, entries)
    return [row]


def train_or_derive(config: Config, run_dir: Union[str, Path], weights_from: Optional[Union[str, Path]] = None,
                    progress: bool = True) -> RunResult:
    """Train one variant into `run_dir` (`t2s.engine.train.train`), or, when `weights_from` names a finished run
    whose training this config shares, derive `run_dir` from it (`take_shared`): nothing is trained, and
    metadata.json says so. A run that cannot be shared (unfinished, another training config) trains itself, after
    saying why. A run already trained (a study interrupted before its evaluation) is returned as it is: the study
    evaluates it next."""
    run = RunDir(run_dir)
    if run.status == "finished":
        print(f"{run.root.name} is trained already (it stopped before its evaluation): evaluating it")
        return RunResult(run.root, read_json(run.summary, {}), "finished")
    if weights_from is not None:
        shared = take_shared(config, RunDir(run_dir), RunDir(weights_from))
        if shared is not None:
            return RunResult(RunDir(run_dir).root, shared, "finished")
    return train(config, run_dir, progress=progress)


def evaluate_or_reuse(run_dir: Union[str, Path], **options) -> list[dict]:
    """`t2s.eval.evaluate.evaluate_run(run_dir, **options)`; for a derived run evaluated with the defaults (the test
    part, its own settings, raw weights), the provider's raw row and clips (`reuse_evaluation`), which would be
    recomputed bit for bit."""
    run = RunDir(run_dir)
    defaults = (all(options.get(k) is None for k in ("num_clips", "num_inference_steps", "guidance_scale",
                                                     "fvd_num_generated", "fvd_real_split"))
                and options.get("part", "test") == "test" and options.get("weights") in (None, ["raw"]))
    if defaults and run.config.is_file():
        cfg = load_config_file(run.config)
        reused = reuse_evaluation(run, cfg, ["raw"])
        if reused is not None:
            publish(run, cfg, reused, int((run.read_metadata().get("shared_training") or {}).get("step") or 0))
            write_rows(run, reused)
            clips = sum(int(reused[0].get(f"num_clips_{split}") or 0) for split in CAPTION_SPLITS)
            run.write_progress("evaluated", clips, clips, "clip", weights="raw")
            return reused
    return evaluate_run(run_dir, **options)
