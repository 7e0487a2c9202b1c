"""The synthsign data set on disk: what determines it, where it is cached, and its atomic (parallel) generation.

`synthsign_params(config)` is everything that determines the generated clips; the hash of it names the cache folder
`<data_dir or <project>/.cache/synthsign>/<16 hex digits>/` (`synthsign_dir`). `synthsign_plan` lists the clips to
render (the sample prompts, each by several signers, then random sentences); `generate_synthsign` renders them
(`t2s.synthsign.render_clip`, in forked workers for large plans) into a temporary folder renamed into place at the end.
Reading the cache back as a dataset is `t2s.data.datasets.load_synthsign`'s job. `recognizer_dir` is where back-translation
recognizers of this data are cached.

Public: `synthsign_params`, `synthsign_dir`, `synthsign_plan`, `generate_synthsign`, `recognizer_dir`,
`SYNTHSIGN_SEED`, `SYNTHSIGN_VERSION`, `SYNTHSIGN_CACHE_ROOT`, `PARALLEL_MIN_CLIPS`. Imports `t2s.config`,
`t2s.synthsign.glosses`, `t2s.synthsign.signer` and `t2s.data.video`.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from t2s.config import PROJECT_ROOT, Config
from t2s.data.video import write_gif
from t2s.rundir import umask
from t2s.synthsign import glosses
from t2s.synthsign import signer as synthsign

SYNTHSIGN_SEED = 0  # the generation seed: the synthetic data stays fixed across training seeds and split seeds
SYNTHSIGN_VERSION = 2  # bump when the renderer changes, so old caches are not reused (2: synonyms and filler words)
SYNTHSIGN_CACHE_ROOT = PROJECT_ROOT / ".cache" / "synthsign"
PARALLEL_MIN_CLIPS = 600  # below this, forking workers costs more than it saves


def synthsign_params(config: Config) -> dict:
    """Everything that determines the generated synthsign clips (its hash names the cache folder)."""
    return {
        "version": SYNTHSIGN_VERSION,
        "num_clips": config.synthsign_num_clips,
        "num_signers": config.synthsign_num_signers,
        "image_size": config.image_size,
        "num_frames": config.num_frames,
        "seed": SYNTHSIGN_SEED,
        "prompts": list(config.sample_prompts),
    }


def synthsign_dir(config: Config) -> Path:
    """`<data_dir or <project>/.cache/synthsign>/<16 hex digits of the generation parameters' hash>/`."""
    root = Path(config.data_dir) if config.data_dir else SYNTHSIGN_CACHE_ROOT
    digest = hashlib.sha256(json.dumps(synthsign_params(config), sort_keys=True).encode()).hexdigest()[:16]
    return root / digest


def synthsign_plan(num_clips: int, num_signers: int, prompts: Sequence[str], seed: int) -> list[dict]:
    """The clips to render: [{id, caption, signer (int), seed}]. Each sample prompt is signed by up to
    `num_signers` different signers (at most a quarter of the clips are prompts); the rest are random sentences
    of 2-5 vocabulary glosses, assigned to signers round-robin."""
    rng = np.random.default_rng(seed)
    prompts = [p for p in prompts if p.strip()]
    repeats = max(1, min(num_signers, num_clips // (4 * len(prompts)))) if prompts else 0
    chosen = [(prompt, r % num_signers) for r in range(repeats) for prompt in prompts][:num_clips]
    while len(chosen) < num_clips:
        chosen.append((glosses.random_caption(rng), len(chosen) % num_signers))
    clip_seeds = rng.integers(0, 2**31, size=num_clips)
    return [
        {"id": f"{synthsign.signer_name(s)}_{i:05d}", "caption": caption, "signer": s, "seed": int(clip_seeds[i])}
        for i, (caption, s) in enumerate(chosen)
    ]


def _render_clips(folder: Path, params: dict, clips: list[dict]) -> np.ndarray:
    """Render `clips` into `folder` as `<id>.gif` + `<id>.txt`; returns their keypoints float32 (N, F, 2, 2)."""
    keypoints = []
    for clip in clips:
        frames, kp = synthsign.render_clip(
            clip["caption"], clip["signer"], params["num_frames"], params["image_size"], seed=clip["seed"]
        )
        write_gif(folder / f"{clip['id']}.gif", frames)
        (folder / f"{clip['id']}.txt").write_text(clip["caption"] + "\n", encoding="utf-8")
        keypoints.append(kp)
    return np.stack(keypoints)


def _render_all(folder: Path, params: dict, plan: list[dict]) -> np.ndarray:
    """`_render_clips` over the plan, in forked worker processes (one per usable core) for large plans on Linux.
    Each clip depends only on its plan entry, so the result is the same either way."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8)
    if workers < 2 or len(plan) < PARALLEL_MIN_CLIPS or sys.platform != "linux":
        return _render_clips(folder, params, plan)
    chunks = [plan[i : i + 64] for i in range(0, len(plan), 64)]
    context = multiprocessing.get_context("fork")  # workers only use numpy and PIL
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        parts = list(pool.map(_render_clips, [folder] * len(chunks), [params] * len(chunks), chunks))
    return np.concatenate(parts)


def generate_synthsign(target: Path, params: dict) -> Path:
    """Render the clips of `params` into `target` atomically: everything is written to a temporary sibling folder
    which is renamed to `target` at the end, so a crash never leaves a half-written cache.

    Layout: `<id>.gif`, `<id>.txt`, `keypoints.npz` (`ids` (N,), `keypoints` float32 (N, F, 2, 2)),
    `manifest.json` ({params, clips: [{id, caption, signer, seed}]}).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    plan = synthsign_plan(params["num_clips"], params["num_signers"], params["prompts"], params["seed"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; the cache is an ordinary folder
        keypoints = _render_all(tmp, params, plan)
        np.savez(tmp / "keypoints.npz", ids=np.array([c["id"] for c in plan]), keypoints=keypoints)
        (tmp / "manifest.json").write_text(json.dumps({"params": params, "clips": plan}, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "manifest.json").is_file():  # not a concurrent generator winning the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target



def recognizer_dir(config: Config) -> Path:
    """Where back-translation recognizers are cached: `<data_dir or <project>/.cache/synthsign>/recognizers/`."""
    return synthsign_dir(config).parent / "recognizers"
