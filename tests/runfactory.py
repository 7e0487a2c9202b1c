"""Make run directories in the real on-disk format (config/metadata/summary JSON, logs CSVs, GIF samples),
filled with made-up numbers, so the report can be tested without training anything. test_evaluate checks that a
made run holds the files, CSV columns and JSON keys of a real (micro) run (`run_layout`), checkpoints, final weights
and TensorBoard aside.

    executed = make_study(tmp_path, "demo", variants=("baseline", "text_finetuned"), seeds=(0, 1))
"""
from __future__ import annotations

import csv
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional, Sequence

import imageio.v3 as iio
import numpy as np
import pandas as pd

from t2s.config import ConfigError, load_config
from t2s.engine.runtime import RECORDED_PACKAGES
from t2s.rundir import EVALUATION_COLUMNS, PROGRESS_KEYS, STATUS_METRICS

PROMPTS = ("hello my name is anna", "where is the train station")
# The evaluation columns come from t2s.eval.evaluate (one definition); these are the ones that hold no made-up metric value.
EVAL_DESCRIPTIONS = {"model_name", "config_name", "weights", "val_loss", "num_parameters_millions", "num_clips",
                     "feature_extractor", "feature_weights_sha256", "timestamp", "eval_part", "eval_signers",
                     "num_inference_steps", "guidance_scale"}
EVAL_METRICS = tuple(c for c in EVALUATION_COLUMNS if c not in EVAL_DESCRIPTIONS and not c.endswith("_status"))
START = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _config(variant: str, seed: int) -> dict:
    try:
        return load_config(variant, "tiny", {"seed": seed}).to_dict()
    except ConfigError:  # a variant with no params file: the baseline under another name
        return {**load_config("baseline", "tiny", {"seed": seed}).to_dict(), "variant": variant}


def _ema_summary(use_ema: bool, steps: int) -> dict:
    """summary.json's EMA keys (t2s.engine.logs.ema_summary's), made up: an update every step at decay 0.999."""
    keys = ("ema_updates", "ema_update_every", "ema_decay_per_step", "ema_decay_per_update", "ema_horizon_steps",
            "ema_final_decay_per_step", "ema_final_horizon_steps", "ema_mass_first_half")
    if not use_ema:
        return dict.fromkeys(keys)
    final = min(0.999, steps / (9 + steps))
    return dict(zip(keys, (int(steps), 1, 0.999, 0.999, 1000.0, final, 1 / (1 - final), 0.01)))


def write_gif(path: Path, seed: int = 0, frames: int = 4, size: int = 8) -> None:
    rng = np.random.default_rng(seed)
    clip = (rng.random((frames, size, size, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, clip, extension=".gif", duration=100, loop=0)


def make_run(
    study_dir: Path,
    variant: str = "baseline",
    seed: int = 0,
    *,
    status: str = "finished",
    steps: int = 100,
    log_every: int = 10,
    loss_shift: float = 0.0,
    evaluation: bool = True,
    eval_status: Optional[dict] = None,
    prompts: Sequence[str] = PROMPTS,
    error: Optional[str] = None,
    notebook: bool = True,
) -> Path:
    """One run folder `<study_dir>/<variant>-seed<seed>/` (and its executed notebook next to it)."""
    config = _config(variant, seed)
    use_ema = config["use_ema"]
    run_dir = Path(study_dir) / f"{variant}-seed{seed}"
    rng = np.random.default_rng(1000 * seed + len(variant))
    logged = np.arange(log_every, steps + 1, log_every)

    def stamp(step) -> str:
        return (START + timedelta(seconds=float(step))).isoformat()

    loss = 0.9 * np.exp(-logged / 40) + 0.1 + loss_shift + rng.normal(0, 0.01, len(logged))
    # the per-step decay t2s.ema logs: diffusers' warm-up counted from the first update, min(d, s / (9 + s))
    ema_decay = np.minimum(0.999, logged / (9 + logged)) if use_ema else np.full(len(logged), np.nan)
    training = pd.DataFrame({
        "epoch": logged // 50, "step": logged, "loss": loss, "lr": 1e-3 * np.minimum(1, logged / 20),
        "grad_norm": rng.random(len(logged)), "ema_decay": ema_decay, "step_time_s": 0.1,
        "clips_per_s": 40 + rng.normal(0, 1, len(logged)), "peak_memory_gb": 0.0, "timestamp": [stamp(s) for s in logged],
    })
    val_steps = np.arange(steps // 2, steps + 1, steps // 2)
    val_raw = 0.3 + loss_shift + 0.02 * seed - val_steps / 10000
    validation = pd.DataFrame({
        "epoch": val_steps // 50, "step": val_steps, "val_loss_raw": val_raw,
        "val_loss_ema": val_raw - 0.01 if use_ema else np.nan, "timestamp": [stamp(s) for s in val_steps],
    })
    memory = pd.DataFrame({
        "step": logged, "device": "cpu", "allocated_gb": 0.0, "reserved_gb": 0.0, "peak_gb": 0.0,
        "rss_gb": 1.0 + logged / 1000, "timestamp": [stamp(s) for s in logged],
    })
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    training.to_csv(logs / "training_metrics.csv", index=False)
    validation.to_csv(logs / "validation_metrics.csv", index=False)
    memory.to_csv(logs / "gpu_memory.csv", index=False)

    _write_json(run_dir / "config.json", config)
    _write_json(run_dir / "metadata.json", {
        "status": status, "error": error, "start_time": stamp(0), "end_time": stamp(steps), "git_commit": "abc1234",
        "host": "testhost", "device_name": "cpu", "torch_version": "2.14.1", "cuda_version": None,
        "packages": {**dict.fromkeys(RECORDED_PACKAGES, "1.0.0"), "torch": "2.14.1", "numpy": "2.4.6"},
        "parameters": {"denoiser": 1_000_000, "text_encoder": 22_000_000,
                       "text_encoder_trainable": 0 if config["freeze_text_encoder"] else 22_000_000, "total": 23_000_000},
        "split": {"mode": "signer_disjoint", "dataset": "synthsign", "source": "made-up/synthsign/0123456789abcdef",
                  "train_clips": 200, "val_clips": 40, "train_signers": 6, "val_signers": 2,
                  "num_skipped": 0, "skipped_files": [], "parts_signer_disjoint": True,
                  "dev_signers": ["signer06"], "test_signers": ["signer07"], "dev_clips": 19, "test_clips": 20,
                  "validation_part": "dev"},
        "effective_batch_size": 4, "world_size": 1, "mixed_precision": "no", "resumed_from": None, "torch_threads": 2,
        "captions_cut": [],
        "steps_per_epoch": 50, "total_steps": int(steps),
        **({"final_weights": {"denoiser.safetensors": "0" * 64, **({"denoiser_ema.safetensors": "1" * 64} if use_ema
                                                                   else {})}} if status == "finished" else {}),
    })
    if status == "finished":
        _write_json(run_dir / "summary.json", {
            "steps": int(steps), "epochs": int(steps // 50), "final_loss": float(loss[-1]), "min_loss": float(loss.min()),
            "mean_loss": float(loss.mean()), "train_time_hours": 0.01 + 0.001 * seed, "peak_memory_gb": 0.0,
            "mean_memory_gb": 0.0, "clips_per_s": float(training["clips_per_s"].mean()),
            "val_loss_step0": 1.0, "val_loss_raw": float(val_raw[-1]),
            "val_loss_ema": float(val_raw[-1] - 0.01) if use_ema else None, "num_parameters_millions": 23.0,
            "world_size": 1, "effective_batch_size": 4, **_ema_summary(use_ema, steps),
        })
    if evaluation and status == "finished":
        rows = []
        for weights in (["raw", "ema"] if use_ema else ["raw"]):
            row = {"model_name": run_dir.name, "config_name": variant, "weights": weights}
            for i, metric in enumerate(EVAL_METRICS):
                reason = (eval_status or {}).get(metric, "ok")
                row[metric] = (10.0 + i + loss_shift + 0.1 * seed - (0.5 if weights == "ema" else 0)) if reason == "ok" else None
                if metric in STATUS_METRICS:
                    row[f"{metric}_status"] = reason
            # the test part's held-out loss: made up as the development part's (the training's validation) plus 0.005
            row.update({"val_loss": float(val_raw[-1]) + 0.005 - (0.01 if weights == "ema" else 0.0),
                        "num_parameters_millions": 23.0, "num_clips": 8, "eval_part": "test",
                        "eval_signers": "signer07", "num_inference_steps": 25, "guidance_scale": 3.0,
                        "feature_extractor": "i3d-state-dict (made up)", "feature_weights_sha256": "0" * 64,
                        "timestamp": stamp(steps)})
            rows.append({c: row.get(c) for c in EVALUATION_COLUMNS})
        pd.DataFrame(rows).to_csv(logs / "evaluation_metrics.csv", index=False)
        _write_json(logs / "evaluation_metrics.json", rows)
        # wall seconds by phase (t2s.engine.phases), made up: training's, then the evaluation's
        _write_json(logs / "phases.json", {
            "setup": 5.0, "steps": 60.0 + seed, "validation": 4.0, "sampling": 1.0, "checkpoints": 0.5,
            "eval_setup": 3.0, "fvd": 0.0, "recognizer": 2.0, "eval_sampling": 20.0, "metrics": 1.0,
            "held_out_loss": 1.5, "eval_writing": 0.5})
        # evaluation clips as t2s.eval.evaluate writes them: the real clip and each weight set's clip, with readings
        index = []
        for i, (prompt, split) in enumerate(zip(prompts, ("seen", "novel"))):
            for weights in ["real"] + (["raw", "ema"] if use_ema else ["raw"]):
                name = f"{weights}_{i:03d}.gif"
                write_gif(run_dir / "evaluation" / name, seed=100 + i)
                index.append({"prompt": prompt, "file": name, "weights": weights, "index": i, "split": split,
                              "seed": None if weights == "real" else i, "signer": "signer07", "glosses": prompt,
                              "reading": prompt if weights == "real" else " ".join(prompt.split()[:2])})
        _write_json(run_dir / "evaluation" / "index.json", index)

    # progress.json as the run left it: evaluated (clips of every weight set), trained, or training at its last log point
    weight_sets = 2 if use_ema else 1
    if status == "finished" and evaluation:
        progress = {"phase": "evaluated", "done": 8 * weight_sets, "total": 8 * weight_sets, "unit": "clip",
                    "rate": 2.0, "weights": "ema" if use_ema else "raw"}
    elif status == "finished":
        progress = {"phase": "trained", "done": int(steps), "total": int(steps), "unit": "step", "epoch": int(steps // 50)}
    else:
        progress = {"phase": "training", "done": int(logged[-1]), "total": int(steps), "unit": "step", "rate": 10.0,
                    "loss": float(loss[-1]), "clips_per_s": float(training["clips_per_s"].iloc[-1]),
                    "epoch": int(logged[-1] // 50)}
    _write_json(run_dir / "progress.json", {**dict.fromkeys(PROGRESS_KEYS), **progress,
                                            "time": (START + timedelta(seconds=float(steps))).timestamp()})

    # training samples as t2s.train writes them: one clip per prompt and sampling step, of the EMA weights when kept
    entries = []
    for sample_step in (steps // 2, steps):
        for i, prompt in enumerate(prompts):
            name = f"step{sample_step:06d}_{i}.gif"
            write_gif(run_dir / "samples" / name, seed=sample_step + i)
            entries.append({"file": name, "prompt": prompt, "step": int(sample_step), "weights": "ema" if use_ema else "raw"})
    _write_json(run_dir / "samples" / "samples.json", entries)
    if notebook:
        run_dir.with_suffix(".ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                             "nbformat_minor": 5}), encoding="utf-8")
    return run_dir


def make_study(
    root: Path,
    study: str = "demo",
    variants: Sequence[str] = ("baseline", "text_finetuned"),
    seeds: Sequence[int] = (0, 1),
    plan: bool = True,
    shifts: Optional[dict] = None,
    **run_options,
) -> Path:
    """An executed/ folder holding one study of variants × seeds, all finished; returns the executed/ folder."""
    executed = Path(root) / "executed"
    study_dir = executed / study
    study_dir.mkdir(parents=True, exist_ok=True)
    shifts = shifts or {"baseline": 0.0, "text_finetuned": -0.05, "no_ema": 0.04}
    for variant in variants:
        for seed in seeds:
            make_run(study_dir, variant, seed, loss_shift=shifts.get(variant, 0.0), **run_options)
    if plan:
        _write_json(study_dir / "study.json", {"study": study, "variants": list(variants), "seeds": list(seeds),
                                               "scale": "tiny", "overrides": {}})
    return executed


def run_layout(run_dir: Path) -> dict:
    """What a run directory holds, numbers aside: its files (digits in GIF names as '#': the factory samples other
    steps and prompts), each CSV's header, and each JSON file's keys (of its entries for a list, one level into
    nested objects). Checkpoints, final weights (weights/*.safetensors) and TensorBoard event files (named by time, host
    and process) are left out: the run factory does not make them, and the report reads none of them."""
    layout = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if not path.is_file() or rel.split("/")[0] in ("checkpoints", "weights", "tensorboard"):
            continue
        if path.suffix == ".gif":
            layout[re.sub(r"[0-9]", "#", rel)] = "gif"
        elif path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                layout[rel] = next(csv.reader(fh))
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            items = data if isinstance(data, list) else [data]
            layout[rel] = sorted({f"{k}.{sub}" if isinstance(v, dict) else k
                                  for item in items for k, v in item.items()
                                  for sub in (v if isinstance(v, dict) else [None])})
        else:
            layout[rel] = "file"
    return layout
