"""Checkpoints of a run: written atomically with their SHA-256 in `checkpoints/index.json`, verified and loaded with
`weights_only=True` (tensors and plain containers, never arbitrary pickled objects), the newest good one found, and
whether a config may resume one.

A checkpoint is a dict: model, text_encoder (fine-tuned runs), ema, optimizer, lr_schedule, grad_scaler, step,
epoch, micro, train_seconds, generator, drop_generator, rng, config, world_size (see `Trainer.state_dict`).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Optional

import torch

from .config import Config, ConfigError
from .rundir import RunDir, atomic_write_bytes, atomic_write_json, read_json

# Keys that may differ between a checkpoint's config and the config that resumes it (they do not change the math).
RESUMABLE_CHANGES = {
    "max_steps", "num_epochs", "resume_from", "log_every", "sample_every", "save_every", "keep_checkpoints",
    "num_workers", "sample_prompts", "description", "eval_num_clips", "val_max_clips", "compare_to", "question",
    "primary_metric", "eval_batch_size", "fvd_min_clips",
}


def list_checkpoints(run: RunDir) -> list[dict]:
    """[{file, step, epoch, sha256}] from checkpoints/index.json, oldest first, only files that exist."""
    index = read_json(run.checkpoints / "index.json", []) or []
    return [e for e in index if (run.checkpoints / e["file"]).exists()]


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
    atomic_write_json(run.checkpoints / "index.json", index[-keep:])
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


def check_resumable(saved: dict, cfg: Config, where: Path) -> None:
    """Refuse to resume a checkpoint whose config differs from `cfg` in a key outside `RESUMABLE_CHANGES`."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
        for k, v in cfg.to_dict().items()
        if k not in RESUMABLE_CHANGES and saved.get(k) != v
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume from {where}: its config does not match ({'; '.join(diffs)}). "
            f"Only these keys may change on resume: {', '.join(sorted(RESUMABLE_CHANGES))}"
        )


def find_resume_point(run: RunDir, cfg: Config) -> Optional[tuple[Path, Optional[dict]]]:
    """(checkpoint path, its state or None) to resume from: an explicit resume_from (a checkpoint file or a run
    directory), else the latest good checkpoint of an unfinished run in run_dir; None to start fresh."""
    if cfg.resume_from:
        src = Path(cfg.resume_from)
        if src.is_dir():
            found = latest_good_checkpoint(RunDir(src))
            if not found:
                raise ConfigError(f"key 'resume_from' is {cfg.resume_from!r}: that run directory has no usable checkpoint")
            return found
        if not src.is_file():
            raise ConfigError(f"key 'resume_from' is {cfg.resume_from!r}: no such checkpoint file or run directory")
        return src, None
    if run.status == "finished":
        raise ConfigError(
            f"{run.root} already holds a finished run; pick another run directory, remove it, or set "
            f"resume_from to continue it (e.g. with a larger max_steps)"
        )
    if list_checkpoints(run):
        found = latest_good_checkpoint(run)
        if not found:
            raise RuntimeError(f"every checkpoint in {run.checkpoints} is corrupt; move the folder away to start afresh")
        return found
    return None
