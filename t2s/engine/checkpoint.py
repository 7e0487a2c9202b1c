"""Checkpoints of a run: their contents (`checkpoint_state`, `load_checkpoint_state`, `restore`), written atomically
with their SHA-256 in `checkpoints/index.json`, verified and loaded with `weights_only=True` (tensors and plain
containers, never arbitrary pickled objects), the newest good one found, and whether a config may resume one.

A checkpoint is a dict: model, text_encoder (fine-tuned runs), ema, optimizer, lr_schedule, grad_scaler, step,
epoch, micro, train_seconds, generator, drop_generator, rng, config, world_size. The functions that read and write
it take the training engine (`t2s.engine.step.Engine`: its models, optimizer, schedule, EMA, generators and position).

A finished run's final weights (`write_final_weights`): safetensors files in `weights/` (names in `t2s.rundir`): the
raw denoiser, its EMA weights as a denoiser state dict, and the text encoder (raw and EMA) when the run trained it,
each with the step and epoch in its metadata and its SHA-256 in metadata.json (`final_weights`). The optimizer-state checkpoints are
then pruned (`prune_checkpoints`) unless `keep_optimizer_state`. `load_run_weights` reads what a run generates from:
those files, else its latest good checkpoint (an unfinished run, or a finished one from before the files existed).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from t2s.config import Config, ConfigError
from t2s.ema import split_shadow
from t2s.engine.runtime import rng_state, set_rng_state
from t2s.rundir import RunDir, atomic_write_bytes, atomic_write_json, read_json

# Keys that may differ between a checkpoint's config and the config that resumes it (they do not change the math).
RESUMABLE_CHANGES = {
    "max_steps", "num_epochs", "resume_from", "log_every", "sample_every", "save_every", "keep_checkpoints",
    "num_workers", "sample_prompts", "validate_every", "description", "eval_num_clips", "val_max_clips", "compare_to",
    "question",
    "primary_metric", "eval_batch_size", "fvd_num_generated", "fvd_real_split", "bt_train_frames", "bt_epochs",
    "bt_seed", "trackers", "keep_optimizer_state",
}


# --------------------------------------------------------------------------------------------- contents
def checkpoint_state(engine) -> dict:
    """Everything a resumed run needs to continue the same trajectory, from a training engine."""
    text = engine.accelerator.unwrap_model(engine.text)
    scaler = engine.accelerator.scaler
    return {
        "model": engine.model.state_dict(),
        "text_encoder": text.model.state_dict() if not engine.cfg.freeze_text_encoder else None,
        "ema": engine.ema.state_dict() if engine.ema else None,
        "optimizer": engine.optimizer.state_dict(),
        "lr_schedule": engine.lr_schedule.state_dict(),
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "step": engine.step,
        "epoch": engine.epoch,
        "micro": engine.micro,
        "train_seconds": engine.train_seconds,
        "generator": engine.generator.get_state(),
        "drop_generator": engine.drop_generator.get_state(),
        "rng": rng_state(),
        "config": engine.cfg.to_dict(),
        "world_size": engine.world_size,  # a resume with another world size maps the position (map_world_size)
    }


def load_checkpoint_state(engine, state: dict) -> None:
    """Put a checkpoint's weights, optimizer, schedule, EMA, generators and position into a training engine."""
    engine.model.load_state_dict(state["model"])
    if state.get("text_encoder") is not None:
        engine.accelerator.unwrap_model(engine.text).model.load_state_dict(state["text_encoder"])
    if engine.ema and state.get("ema"):
        engine.ema.load_state_dict(state["ema"], step=state["step"])  # the step: for states saved without a count
    engine.optimizer.load_state_dict(state["optimizer"])
    engine.lr_schedule.load_state_dict(state["lr_schedule"])
    if engine.accelerator.scaler is not None and state.get("grad_scaler"):
        engine.accelerator.scaler.load_state_dict(state["grad_scaler"])
    engine.step, engine.epoch, engine.micro = state["step"], state["epoch"], state["micro"]
    engine.train_seconds = state.get("train_seconds", 0.0)
    engine.generator.set_state(state["generator"])
    engine.drop_generator.set_state(state["drop_generator"])
    set_rng_state(state["rng"])


def restore(engine, state: dict, where: Path) -> Optional[dict]:
    """Resume a training engine from a checkpoint's state: the micro-batch its out-of-memory fallback had chosen,
    the config check, the state, and the position mapped when the world size changed. Returns that change (the
    record metadata.json keeps, with its note) or None."""
    saved = state["config"]
    same_effective = saved["batch_size"] * saved["gradient_accumulation_steps"] == engine.cfg.effective_batch_size
    if same_effective and saved["batch_size"] != engine.cfg.batch_size:  # an out-of-memory fallback happened
        engine.set_micro_batch(saved["batch_size"], saved["gradient_accumulation_steps"])
    check_resumable(saved, engine.cfg, where)
    engine.load_state_dict(state)
    saved_world = int(state.get("world_size", 1))
    if saved_world == engine.world_size:
        return None
    position = {"step": engine.step, "epoch": engine.epoch, "micro": engine.micro}
    moved = map_world_size(position, engine.cfg, saved_world, engine.world_size, engine.steps_per_epoch,
                           engine.total_steps)
    engine.epoch, engine.micro = moved["epoch"], moved["micro"]
    return moved["change"]


# --------------------------------------------------------------------------------------------- files
def list_checkpoints(run: RunDir) -> list[dict]:
    """[{file, step, epoch, sha256}] from checkpoints/index.json, oldest first, only files that exist."""
    index = read_json(run.checkpoint_index, []) or []
    return [e for e in index if (run.checkpoints / e["file"]).exists()]


def reconcile_checkpoints(run: RunDir) -> list[str]:
    """Make checkpoints/index.json list exactly the intact checkpoint files (before a resume): a file written but not
    yet indexed (a second interrupt between the two writes of `save_checkpoint`) is complete, since it was renamed into
    place whole, and is indexed with its step, epoch and SHA-256 once it loads; one that does not load is removed (a
    write's leftover temporary files are `RunDir.remove_unfinished_writes`'). Returns what it did, in words (empty
    when the index was right)."""
    if not run.checkpoints.is_dir():
        return []
    index = [e for e in read_json(run.checkpoint_index, []) or [] if (run.checkpoints / e["file"]).exists()]
    known = {e["file"] for e in index}
    done = []
    for path in sorted(run.checkpoints.glob("*.pt")):
        if path.name in known:
            continue
        try:
            state = load_checkpoint(path)
        except RuntimeError:
            path.unlink(missing_ok=True)
            done.append(f"removed {path.name}, which does not load")
            continue
        index.append({"file": path.name, "step": state["step"], "epoch": state["epoch"], "sha256": sha256_file(path)})
        done.append(f"indexed {path.name} (step {state['step']}), written but not yet indexed when the run stopped")
    if done:
        atomic_write_json(run.checkpoint_index, sorted(index, key=lambda e: e["step"]))
    return done


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: tensors and plain containers only, never arbitrary pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise RuntimeError(
            f"checkpoint {path} could not be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"t2s loads checkpoints with weights_only=True and refuses anything that needs arbitrary unpickling"
        ) from None


def save_checkpoint(run: RunDir, name: str, state: dict, keep: int) -> Path:
    """Write atomically with its SHA-256 in checkpoints/index.json; then prune to the newest `keep`."""
    path = run.checkpoints / name
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    index = [e for e in list_checkpoints(run) if e["file"] != name]
    index.append({"file": name, "step": state["step"], "epoch": state["epoch"], "sha256": hashlib.sha256(data).hexdigest()})
    index.sort(key=lambda e: e["step"])
    atomic_write_json(run.checkpoint_index, index[-keep:])
    for old in index[:-keep]:
        (run.checkpoints / old["file"]).unlink(missing_ok=True)
    return path


def load_verified(run: RunDir, entry: dict) -> dict:
    """Load one indexed checkpoint after checking its SHA-256 (a truncated or altered file fails here)."""
    path = run.checkpoints / entry["file"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if entry.get("sha256") and digest != entry["sha256"]:
        raise RuntimeError(f"checkpoint {path} is corrupt or truncated (SHA-256 {digest[:12]}…, expected {entry['sha256'][:12]}…)")
    return load_checkpoint(path)


def latest_good_checkpoint(run: RunDir) -> Optional[tuple[Path, dict]]:
    """The newest checkpoint that verifies and loads; a bad one is skipped with a warning naming it."""
    for entry in reversed(list_checkpoints(run)):
        try:
            return run.checkpoints / entry["file"], load_verified(run, entry)
        except (OSError, RuntimeError) as exc:
            warnings.warn(f"{exc}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=2)
    return None


# --------------------------------------------------------------------------------------------- final weights
def write_final_weights(run: RunDir, state: dict) -> dict:
    """A finished run's weights from its final state (a checkpoint's dict) as safetensors, each written atomically:
    raw denoiser, EMA denoiser (the raw state dict with the EMA's averages in place of the parameters), the trained
    text encoder and its EMA. Returns {file: sha256} (metadata.json's final_weights)."""
    meta = {"step": str(int(state["step"])), "epoch": str(int(state["epoch"])), "format": "t2s-final-weights-1"}
    files = {run.weights_raw: state["model"]}
    denoiser_ema, text_ema = split_shadow(state["ema"], list(state["model"])) if state.get("ema") else ({}, {})
    if state.get("ema"):
        files[run.weights_ema] = {**state["model"], **denoiser_ema}
    if state.get("text_encoder") is not None:
        files[run.weights_text] = state["text_encoder"]
        if text_ema:
            files[run.weights_text_ema] = {**state["text_encoder"], **text_ema}
    written = {}
    for path, tensors in files.items():
        data = safetensors_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=meta)
        atomic_write_bytes(path, data)
        written[path.name] = hashlib.sha256(data).hexdigest()
    for stale in {run.weights_raw, run.weights_ema, run.weights_text, run.weights_text_ema} - set(files):
        stale.unlink(missing_ok=True)
    return written


def _read_weights_file(path: Path, digests: dict) -> tuple[dict, dict]:
    """(tensors, metadata) of one final-weights file, after checking its SHA-256 when metadata.json records one."""
    data = path.read_bytes()
    expected = digests.get(path.name)
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise RuntimeError(f"{path} is corrupt or truncated (its SHA-256 differs from metadata.json's final_weights)")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return safetensors_load(data), meta


def load_run_weights(run: RunDir) -> Optional[dict]:
    """What a run generates from: {model, ema (a denoiser state dict, or None without EMA), text_encoder and
    text_encoder_ema (state dicts, or None where the run did not train its encoder), step, epoch, source (the
    file)}: its final safetensors weights, else its latest good checkpoint; None when it has neither."""
    if run.weights_raw.is_file():
        digests = run.read_metadata().get("final_weights") or {}

        def read(path: Path) -> Optional[dict]:
            return _read_weights_file(path, digests)[0] if path.is_file() else None

        model, meta = _read_weights_file(run.weights_raw, digests)
        return {"model": model, "ema": read(run.weights_ema), "text_encoder": read(run.weights_text),
                "text_encoder_ema": read(run.weights_text_ema), "step": int(meta["step"]),
                "epoch": int(meta.get("epoch", 0)), "source": run.weights_raw}
    found = latest_good_checkpoint(run)
    if found is None:
        return None
    path, state = found
    text = state.get("text_encoder")
    ema, text_ema = None, None
    if state.get("ema"):
        denoiser_ema, text_shadow = split_shadow(state["ema"], list(state["model"]))
        ema = {**state["model"], **denoiser_ema}
        text_ema = {**text, **text_shadow} if text is not None and text_shadow else None
    return {"model": state["model"], "ema": ema, "text_encoder": text, "text_encoder_ema": text_ema,
            "step": int(state["step"]), "epoch": int(state["epoch"]), "source": path}


def prune_checkpoints(run: RunDir) -> None:
    """Remove the optimizer-state checkpoints (a finished run whose final weights are written): the index first
    emptied, then every checkpoint file (indexed or not) and unfinished write, then the index and the empty folder."""
    index = run.checkpoint_index
    if not run.checkpoints.is_dir():
        return
    atomic_write_json(index, [])
    for path in [*run.checkpoints.glob("*.pt"), *run.checkpoints.glob(".*.tmp")]:
        path.unlink(missing_ok=True)
    index.unlink(missing_ok=True)
    try:
        run.checkpoints.rmdir()
    except OSError:
        pass  # something else is in it: left as it is


def check_resumable(saved: dict, cfg: Config, where: Path) -> None:
    """Refuse to resume a checkpoint whose config differs from `cfg` in a key outside `RESUMABLE_CHANGES`. A key the
    checkpoint's config lacks (saved before the key existed) counts as its default value, so adding a config key
    never blocks resuming older checkpoints."""
    defaults = Config().to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k, defaults[k])!r}, now {v!r}"
        for k, v in cfg.to_dict().items()
        if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume from {where}: its config does not match ({'; '.join(diffs)}). "
            f"Only these keys may change on resume: {', '.join(sorted(RESUMABLE_CHANGES))}"
        )


def map_world_size(position: dict, cfg: Config, saved_world: int, world: int, steps_per_epoch: int,
                   total_steps: int) -> dict:
    """The position {step, epoch, micro} of a checkpoint written by `saved_world` processes, for `world` processes.

    The optimizer step count and the epoch are kept; the micro-batches done in the epoch are mapped by global samples
    consumed (the sample order does not depend on the world size), rounded down to a whole optimizer step of the new
    global batch (a few samples may be seen twice); past the new, shorter epoch's end, the next epoch starts. Returns
    {epoch, micro, change}: `change` is the record metadata.json keeps, with a `note` saying that the effective batch
    changes (the learning rate is not rescaled), so the run no longer follows an uninterrupted one's trajectory."""
    step, epoch = position["step"], position["epoch"]
    consumed = position["micro"] * cfg.batch_size * saved_world  # global samples of this epoch already trained on
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * world
    micro = consumed // per_step * cfg.gradient_accumulation_steps
    restart = micro * cfg.batch_size * world
    seen_again = consumed - restart
    if micro >= steps_per_epoch * cfg.gradient_accumulation_steps:  # the new, shorter epoch is over
        epoch, micro, restart, seen_again = epoch + 1, 0, 0, 0
    before, after = cfg.effective_batch_size * saved_world, cfg.effective_batch_size * world
    note = (
        f"resumed with {world} processes from a checkpoint written by {saved_world}: optimizer step {step} and epoch "
        f"{epoch + 1} kept, the position in the epoch mapped by global samples consumed ({consumed} -> restart at "
        f"sample {restart}); the effective batch changes from {before} to {after} (learning rate not rescaled) and the "
        f"schedule runs to {total_steps} steps, so the run no longer matches an uninterrupted one")
    change = {"step": step, "epoch": epoch, "from_world_size": saved_world, "to_world_size": world,
              "from_effective_batch_size": before, "to_effective_batch_size": after,
              "samples_seen_again": seen_again, "note": note}
    return {"epoch": epoch, "micro": micro, "change": change}


def find_resume_point(run: RunDir, cfg: Config) -> Optional[tuple[Path, Optional[dict]]]:
    """(checkpoint path, its state or None) to resume from: an explicit resume_from (a checkpoint file or a run
    directory), else the latest good checkpoint of an unfinished run in run_dir; None to start fresh."""
    if cfg.resume_from:
        src = Path(cfg.resume_from)
        if src.is_dir():
            found = latest_good_checkpoint(RunDir(src))
            if not found:
                raise ConfigError(f"key 'resume_from' is {cfg.resume_from!r}: that run directory has no usable checkpoint "
                                  f"(a finished run keeps its optimizer state only with keep_optimizer_state: true)")
            return found
        if not src.is_file():
            raise ConfigError(f"key 'resume_from' is {cfg.resume_from!r}: no such checkpoint file or run directory")
        return src, None
    if run.status == "finished":
        raise ConfigError(
            f"{run.root} already holds a finished run; pick another run directory, remove it, or set "
            f"resume_from to continue it (e.g. with a larger max_steps; it needs the optimizer-state checkpoints a "
            f"finished run keeps only with keep_optimizer_state: true)"
        )
    for name in run.remove_unfinished_writes():
        print(f"{run.root}: removed the unfinished write {name}")
    for change in reconcile_checkpoints(run):
        print(f"{run.checkpoints}: {change}")
    if list_checkpoints(run):
        found = latest_good_checkpoint(run)
        if not found:
            raise RuntimeError(f"every checkpoint in {run.checkpoints} is corrupt; move the folder away to start afresh")
        return found
    return None
