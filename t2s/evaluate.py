"""Evaluation of a run: sample clips for held-out captions and compare them with the real clips of those captions.

    rows = evaluate_run("executed/mystudy/baseline-seed0")   # one row per weight set: raw, and ema when use_ema

What is evaluated
-----------------
* The evaluation set (`t2s.data.evaluation_clips`): `num_clips` (default `cfg.eval_num_clips`, an upper bound) clips
  divided among three caption splits as evenly as their candidates allow (`data.split_sizes`; e.g. 24 -> 8 + 8 + 8,
  8 -> 3 + 3 + 2), each scored separately by back-translation:
  - `seen`: captions that occur in the training split, signed by a signer who does not sign them there. synthsign:
    distinct training gloss sequences (the sample prompts first, then a fixed-seed order), each rendered for a held-out
    (validation) signer; other data: validation clips whose caption occurs in training.
  - `novel`: validation clips whose caption (gloss sequence) never occurs in training, in split order.
  - `paraphrase` (synthsign only): the first seen captions reworded by `synthsign.paraphrase` (synonyms, phrases,
    filler words: "thanks a lot" for "thank you very much"); same glosses, so the same real clip. Only a text encoder
    that maps wordings it never saw to their meaning can sign them.
  Sampling seeds: seen clip i gets seed i, novel clip j seed n_seen + j, a paraphrase its seen clip's seed (so seen
  and paraphrase differ in wording only). Clips are sampled by `t2s.pipeline.TextToSignPipeline` in batches of
  `cfg.eval_batch_size`; each clip depends on its caption and seed only (not on its batch), so every run, variant and
  weight set sees the same captions and the same initial noise. Everything is fixed: it does not vary with the
  training seed. `num_clips_seen`, `num_clips_novel`, `num_clips_paraphrase` count them.
* The whole-set metrics below (FVD to sign fidelity) use the seen and novel clips (`num_clips` = their number); a
  paraphrase repeats its seen clip's real clip and glosses, so it enters back-translation only.
* Weight sets: the latest checkpoint's raw weights and, when the run kept an EMA (`use_ema`), its EMA weights.
* Distribution metrics on I3D features of the generated and the real clips (`metrics.load_i3d`: StyleGAN-V's
  TorchScript I3D or an I3D state dict; the row records `feature_extractor` and the weights file's
  `feature_weights_sha256`):
  - `fvd`: Fréchet Video Distance, null below `cfg.fvd_min_clips` clips (default 401 = the 400-d features + 1: with
    fewer clips each covariance is singular and the estimate biased; see config.py). Comparable only between rows with
    the same `num_clips` and `feature_extractor`.
  - `kvd`: kernel video distance (Unterthiner et al. 2018): unbiased polynomial-kernel MMD^2 on the same features
    (`metrics.kernel_distance`), usable at small n (>= 2), expectation 0 when the two distributions are equal.
    `kvd_std`: its standard error from 100 seeded subsets of min(n // 2, 1000) clips (delete-d jackknife,
    `metrics.kernel_distance_std`; needs n >= 4). Read kvd +- 2 kvd_std.
* LPIPS / SSIM / PSNR (frame by frame against the real clip of the same caption, averaged over frames and clips),
  temporal consistency and motion magnitude of the generated clips and, for reference, of the real ones (`*_real`).
* Held-out diffusion loss (`held_out_loss`): the training engine's fixed-timestep, fixed-noise validation loss
  on the first `val_max_clips` validation clips, for each weight set (column `val_loss`).
* Sign fidelity (synthsign only: a dataset with ground-truth keypoints): hands are found in every generated frame
  by colour (`metrics.find_hands` with `synthsign.HAND_COLORS`), and E[j, i] = `metrics.dtw_joint_error` of generated
  clip j's hands against the ground-truth track of evaluation clip i's caption, with coordinates divided by the image
  size (1.0 = one image width). Every clip is scored, found hands or not: a hand missing from a generated frame (or
  present where the ground truth has none) is charged 1.0 image width in place of its distance (a frame pair costs
  the mean over its hands), so a clip in which no hand is found scores exactly 1.0 -- every variant is scored on the
  same clips (`hand_detection_rate`, the fraction of (frame, hand) slots with a hand found, says how often hands were
  missed). If no hand is found in any clip, every pair costs 1.0 and dtw_gap is 0 with a zero-width interval.
  - `dtw_error`: mean of E[i, i] (each clip against its own caption).
  - `dtw_error_shuffled` (the control): mean of E[j, i] over ALL pairs j != i whose captions differ -- the same
    generated clips and ground truths, re-paired; no extra sampling.
  - `dtw_gap` = dtw_error_shuffled - dtw_error: how much closer a clip is to its own caption's signing than to other
    captions'; > 0 if the model follows its captions, ~0 if it ignores them. `dtw_gap_low` / `dtw_gap_high`: 95%
    percentile bootstrap interval over clips (`DTW_BOOTSTRAP_RESAMPLES` resamples of the n clips with replacement,
    generator seeded `DTW_BOOTSTRAP_SEED`; pairs re-formed within each resample); null below `DTW_GAP_MIN_CLIPS` = 5
    clips, where a bootstrap has too few distinct resamples for an interval.
* Back-translation (synthsign only; `t2s.backtranslate`): a small recognizer, trained once per data and split on
  clips rendered for it (training-split signers, none of the held-out captions, `bt_train_frames` / `bt_epochs` /
  `bt_seed`) and cached (`bt_recognizer`: the first 16 hex digits of its key), reads each clip's gloss sequence; the
  reading is scored against the clip's glosses, per split (`<split>` = seen, novel, paraphrase) and on `unseen`
  (novel and paraphrase clips pooled: every caption whose wording never occurred in training; the text-encoder
  question's primary metric):
  - `bt_bleu4_<split>`: sacrebleu corpus BLEU-4 (0-100) of the generated clips' readings, gloss tokens space-joined,
    tokenize "none" (glosses are tokens already); `bt_bleu4_<split>_low` / `_high`: 95% percentile bootstrap interval
    over the split's clips (1000 resamples, seed 0; null below 5 clips).
  - `bt_wer_<split>`: jiwer corpus gloss WER (edits / reference glosses; lower is better, can exceed 1).
  - `bt_exact_<split>`: fraction of clips read exactly as their gloss sequence.
  - `..._ceiling`: the same score of the recognizer on the split's REAL clips (held-out signers): the most a
    generator can reach with this recognizer. The same for every run and weight set of one data and split.
  - `..._floor`: the generated clips' readings scored against the glosses of every OTHER clip of the split whose
    gloss sequence differs (all such off-diagonal pairs, one corpus): what a model that ignores its caption gets.
  "How much of the caption survives generation" is where bt_<score>_<split> lies between floor and ceiling. A split
  with no clips, or fewer than 2 different gloss sequences (no floor), is null with the reason in
  `bt_<score>_<split>_status` (one status per score and split covers its _ceiling, _floor and interval).
* Cost: `inference_time_ms` is the wall-clock time of sampling all clips divided by their number -- per clip, in
  batches of `eval_batch_size` (CUDA synchronised; after a one-step warm-up) --, `inference_memory_gb` the peak during
  sampling (CUDA: `max_memory_allocated`; CPU: the process's peak resident set size, reset before sampling on Linux
  through /proc/self/clear_refs, else sampled every 10 ms), `num_parameters_millions` the denoiser's parameters.

A metric that cannot be computed is null (empty CSV cell, JSON null) and its `<metric>_status` column says why
(e.g. how to provide the I3D or AlexNet weights, or how many clips FVD needs); otherwise the status is "ok".

Files (in the run directory)
----------------------------
* `logs/evaluation_metrics.csv`, `logs/evaluation_metrics.json`: the rows (`EVALUATION_COLUMNS`), one per weight
  set; a weight set not evaluated this time keeps its previous row. Written atomically.
* `tensorboard/`: the numbers as scalars `eval/<weights>/<metric>` at the checkpoint's step.
* `evaluation/<weights>_<i>.gif` (generated), `evaluation/real_<i>.gif` (the reference clip), and
  `evaluation/index.json`: [{prompt, file, weights ("raw" | "ema" | "real"), index, split, seed, signer, glosses (the
  reference, space-joined), reading (the recognizer's reading of that clip, space-joined; null without one)}].

Metric weights are looked up as `t2s.metrics.load_i3d` / `load_lpips` document (argument, environment variable,
cache folder); nothing is downloaded unless the environment variable `T2S_ALLOW_DOWNLOAD=1` is set (I3D only: the
pinned StyleGAN-V TorchScript file, kept only if its SHA-256 matches).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import metrics, synthsign
from .config import Config
from .diffusion import VAL_NOISE_SEED, held_out_loss  # noqa: F401 (re-exported: one definition, in diffusion.py)
from .rundir import RunDir, atomic_write_bytes, atomic_write_json, read_json
from .runtime import PeakMemory, size_threads, sync
from .share import reuse_evaluation

DTW_BOOTSTRAP_SEED = 0  # the bootstrap of dtw_gap's interval: identical resamples for every run and weight set
DTW_BOOTSTRAP_RESAMPLES = 1000
DTW_INTERVAL = 0.95
# dtw_gap needs this many clips: n clips have C(2n - 1, n) distinct bootstrap resamples (35 at n = 4, 126 at n = 5), too
# few below 5 for the 2.5% tails of a 95% percentile interval -- at n = 2 every usable resample gives the same gap,
# a zero-width interval that would read as certainty.
DTW_GAP_MIN_CLIPS = 5
ALLOW_DOWNLOAD_ENV_VAR = "T2S_ALLOW_DOWNLOAD"
CAPTION_SPLITS = ("seen", "novel", "paraphrase")  # = t2s.data.CAPTION_SPLITS
BT_SCORES = ("bleu4", "wer", "exact")
# back-translation is scored per caption split and on "unseen" = novel + paraphrase pooled (captions whose wording
# never occurred in training: the text-encoder question's primary metric)
BT_GROUPS = {**{split: (split,) for split in CAPTION_SPLITS}, "unseen": ("novel", "paraphrase")}
# back-translation: bt_<score>_<group> (the metric), with _ceiling and _floor beside it; bt_bleu4_<group>_low/_high
BT_METRICS = tuple(f"bt_{score}_{split}" for split in BT_GROUPS for score in BT_SCORES)
BT_COLUMNS = [column for split in BT_GROUPS for column in [
    *(f"bt_{score}_{split}{part}" for score in BT_SCORES for part in ("", "_ceiling", "_floor")),
    f"bt_bleu4_{split}_low", f"bt_bleu4_{split}_high"]]
STATUS_METRICS = ("fvd", "kvd", "kvd_std", "lpips", "ssim", "psnr", "dtw_error", "dtw_error_shuffled", "dtw_gap",
                  "hand_detection_rate") + BT_METRICS
EVALUATION_COLUMNS = [
    "model_name", "config_name", "weights",
    "fvd", "kvd", "kvd_std", "lpips", "ssim", "psnr",
    "temporal_consistency", "temporal_consistency_real", "motion_magnitude", "motion_magnitude_real",
    "dtw_error", "dtw_error_shuffled", "dtw_gap", "dtw_gap_low", "dtw_gap_high", "hand_detection_rate",
    *BT_COLUMNS,
    "val_loss", "inference_time_ms", "inference_memory_gb", "num_parameters_millions", "num_clips",
    "num_clips_seen", "num_clips_novel", "num_clips_paraphrase",
    "feature_extractor", "feature_weights_sha256", "bt_recognizer", "timestamp",
] + [f"{m}_status" for m in STATUS_METRICS]
NO_KEYPOINTS = "no ground-truth keypoints (synthsign only)"
OK = "ok"


# --------------------------------------------------------------------------------------------- comparing clips
def hand_tracks(clips: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
    """Hands found in clips (B, 3, F, H, W) in [-1, 1]: keypoints [(F, 2, 2)] (NaN where missing), found (B, F, 2)."""
    from .data import to_frames

    tracks, found = [], []
    for clip in clips:
        kp, mask = metrics.find_hands(to_frames(clip), synthsign.HAND_COLORS)
        tracks.append(kp)
        found.append(mask)
    return tracks, np.stack(found)


def dtw_matrix(tracks: Sequence[np.ndarray], keypoints: Sequence[np.ndarray], body_size: float) -> np.ndarray:
    """E (n, n): E[j, i] = DTW joint error of generated clip j's hand track against ground-truth track i."""
    return np.array([[metrics.dtw_joint_error(track, gt, body_size) for gt in keypoints] for track in tracks])


def sign_fidelity(errors: np.ndarray, captions: Sequence[str], resamples: int = DTW_BOOTSTRAP_RESAMPLES,
                  seed: int = DTW_BOOTSTRAP_SEED, level: float = DTW_INTERVAL) -> dict:
    """dtw_error, dtw_error_shuffled, dtw_gap and its bootstrap interval from E = `dtw_matrix(...)` (see the module
    docstring), with a status for each; captions[i] is the caption of ground truth i (and of generated clip i).
    dtw_gap is null below `DTW_GAP_MIN_CLIPS` clips; resamples that hold a single caption (no control pair) are
    skipped."""
    n = len(errors)
    index = {caption: k for k, caption in enumerate(dict.fromkeys(captions))}
    codes = np.array([index[c] for c in captions])
    out = {"dtw_error": float(np.mean(np.diag(errors))), "dtw_error_status": OK}
    other = codes[:, None] != codes[None, :]
    if not other.any():
        reason = "needs at least 2 evaluation clips with different captions"
        out.update(dtw_error_shuffled=None, dtw_error_shuffled_status=reason, dtw_gap=None, dtw_gap_low=None,
                   dtw_gap_high=None, dtw_gap_status=reason)
        return out
    out["dtw_error_shuffled"], out["dtw_error_shuffled_status"] = float(errors[other].mean()), OK
    if n < DTW_GAP_MIN_CLIPS:
        reason = f"dtw_gap and its bootstrap interval need at least {DTW_GAP_MIN_CLIPS} evaluation clips, got {n}"
        out.update(dtw_gap=None, dtw_gap_low=None, dtw_gap_high=None, dtw_gap_status=reason)
        return out
    out["dtw_gap"], out["dtw_gap_status"] = out["dtw_error_shuffled"] - out["dtw_error"], OK
    rng, gaps = np.random.default_rng(seed), []
    for _ in range(resamples):
        b = rng.integers(0, n, size=n)
        sub, pairs = errors[np.ix_(b, b)], codes[b][:, None] != codes[b][None, :]
        if pairs.any():  # a resample of one caption only has no control pairs: it is left out
            gaps.append(sub[pairs].mean() - np.diag(sub).mean())
    tail = 100 * (1 - level) / 2
    out["dtw_gap_low"], out["dtw_gap_high"] = (float(v) for v in np.percentile(gaps, [tail, 100 - tail]))
    return out


def distribution_metrics(generated_features: torch.Tensor, real_features: torch.Tensor, fvd_min_clips: int) -> dict:
    """fvd, kvd, kvd_std (with statuses) between I3D features (n, D) of the generated and the real clips."""
    n = min(len(generated_features), len(real_features))
    out: dict = {}
    if n < fvd_min_clips:
        out["fvd"], out["fvd_status"] = None, (
            f"FVD needs at least fvd_min_clips = {fvd_min_clips} clips per set, got {n}: below the I3D feature dimension "
            f"+ 1 (401) the covariances are singular and FVD is biased (see kvd instead; raise eval_num_clips and the "
            f"held-out split, or lower fvd_min_clips knowingly)")
    else:
        try:
            mu_g, sigma_g = metrics.feature_statistics(generated_features)
            mu_r, sigma_r = metrics.feature_statistics(real_features)
            out["fvd"], out["fvd_status"] = metrics.frechet_distance(mu_g, sigma_g, mu_r, sigma_r), OK
        except ValueError as exc:
            out["fvd"], out["fvd_status"] = None, f"FVD could not be computed: {exc}"
    if n < 2:
        out["kvd"], out["kvd_status"] = None, f"KVD needs at least 2 clips per set, got {n}"
    else:
        out["kvd"], out["kvd_status"] = metrics.kernel_distance(generated_features, real_features), OK
    if n < 4:
        out["kvd_std"], out["kvd_std_status"] = None, f"the KVD interval needs at least 4 clips per set, got {n}"
    else:
        out["kvd_std"], out["kvd_std_status"] = metrics.kernel_distance_std(generated_features, real_features), OK
    return out


def compare_clips(
    generated: torch.Tensor,
    real: torch.Tensor,
    keypoints: Optional[Sequence[np.ndarray]] = None,
    captions: Optional[Sequence[str]] = None,
    extractor: Optional[metrics.VideoFeatureExtractor] = None,
    extractor_status: str = "no I3D model given",
    lpips_model=None,
    lpips_status: str = "no LPIPS model given",
    real_features: Optional[torch.Tensor] = None,
    fvd_min_clips: int = Config.fvd_min_clips,
) -> dict:
    """Every metric of `generated` clips against `real` clips of the same captions, with a status per metric.

    generated, real: (B, 3, F, H, W) in [-1, 1], clip i of one is compared with clip i of the other.
    keypoints: ground-truth hand tracks [(F, 2, 2)] of the real clips' captions (synthsign), or None.
    captions: the caption of each clip (which pairs form the dtw_error_shuffled control); default: all distinct.
    extractor: a loaded I3D (`metrics.load_i3d`), or None with the reason in extractor_status; likewise lpips_model.
    real_features: the real clips' I3D features if already computed (saves a pass over the real clips).
    Returns {metric: float | None, f"{metric}_status": "ok" | reason, feature_extractor, feature_weights_sha256}.
    """
    generated, real = generated.detach().float().cpu(), real.detach().float().cpu()
    if generated.shape != real.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and real {tuple(real.shape)} clips differ in shape")
    n = len(generated)
    out: dict = {"feature_extractor": None, "feature_weights_sha256": None}

    def put(metric: str, value, status: str = OK) -> None:
        ok = value is not None and math.isfinite(value)
        out[metric] = float(value) if ok else None
        if metric in STATUS_METRICS:
            out[f"{metric}_status"] = status if ok or status != OK else f"{metric} is not a finite number"

    # FVD and KVD
    if extractor is None:
        for m in ("fvd", "kvd", "kvd_std"):
            put(m, None, extractor_status)
    else:
        out["feature_extractor"], out["feature_weights_sha256"] = extractor.name, extractor.sha256
        if n < 2:
            for m in ("fvd", "kvd", "kvd_std"):
                put(m, None, f"distribution metrics need at least 2 clips per set, got {n}")
        else:
            features = extractor.features(generated)
            reference = real_features if real_features is not None else extractor.features(real)
            found = distribution_metrics(features, reference, fvd_min_clips)
            for m in ("fvd", "kvd", "kvd_std"):
                put(m, found[m], found[f"{m}_status"])
    # paired pixel and perceptual metrics
    if lpips_model is None:
        put("lpips", None, lpips_status)
    else:
        put("lpips", metrics.compute_lpips(generated, real, lpips_model))
    put("ssim", metrics.ssim(generated, real))
    put("psnr", metrics.psnr(generated, real))
    # temporal statistics (need 2 frames)
    if generated.shape[2] >= 2:
        put("temporal_consistency", metrics.temporal_consistency(generated))
        put("temporal_consistency_real", metrics.temporal_consistency(real))
        put("motion_magnitude", metrics.motion_magnitude(generated))
        put("motion_magnitude_real", metrics.motion_magnitude(real))
    else:
        for m in ("temporal_consistency", "temporal_consistency_real", "motion_magnitude", "motion_magnitude_real"):
            put(m, None)
    # sign fidelity
    sign_metrics = ("dtw_error", "dtw_error_shuffled", "dtw_gap", "dtw_gap_low", "dtw_gap_high", "hand_detection_rate")
    if keypoints is None:
        for m in sign_metrics:
            put(m, None, NO_KEYPOINTS)
        return out
    if len(keypoints) != n:
        raise ValueError(f"{len(keypoints)} keypoint tracks for {n} clips")
    captions = list(captions) if captions is not None else [str(i) for i in range(n)]
    if len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} clips")
    tracks, found = hand_tracks(generated)
    put("hand_detection_rate", metrics.hand_detection_rate(found))
    body_size = float(generated.shape[-1])  # the image size: errors are in image widths
    fidelity = sign_fidelity(dtw_matrix(tracks, keypoints, body_size), captions)
    for m in ("dtw_error", "dtw_error_shuffled", "dtw_gap"):
        put(m, fidelity[m], fidelity[f"{m}_status"])
    for m in ("dtw_gap_low", "dtw_gap_high"):
        put(m, fidelity[m])
    return out


# --------------------------------------------------------------------------------------------- back-translation
def back_translation_metrics(readings: Optional[Sequence[Sequence[str]]], real_readings: Optional[Sequence[Sequence[str]]],
                             references: Sequence[Sequence[str]], splits: Sequence[str],
                             unavailable: Optional[dict] = None) -> dict:
    """The `BT_COLUMNS` (and their statuses) of one weight set: per `BT_GROUPS` group (a caption split, or "unseen":
    novel and paraphrase pooled), `backtranslate.back_translation` of the generated clips' readings and the real
    clips' readings against the references of the group's clips.

    readings / real_readings / references / splits: one entry per evaluation clip (readings None: no recognizer).
    unavailable: {split: reason} for splits that are empty or cannot be scored, or {"*": reason} for all of them.
    A pooled group is scored on its members that can be; it is null only when none can.
    """
    from . import backtranslate

    unavailable = dict(unavailable or {})
    out: dict = {c: None for c in BT_COLUMNS}
    for split, parts in BT_GROUPS.items():
        reasons = [unavailable.get("*") or unavailable.get(part) for part in parts]
        usable = [part for part, why in zip(parts, reasons) if why is None]
        reason = None if usable else "; ".join(dict.fromkeys(r for r in reasons if r))
        members = [i for i, s in enumerate(splits) if s in usable]
        if reason is None and not members:
            reason = f"no {' or '.join(parts)} evaluation clips"
        if reason is None:
            try:
                found = backtranslate.back_translation([readings[i] for i in members],
                                                       [real_readings[i] for i in members],
                                                       [references[i] for i in members])
            except ValueError as exc:
                reason = str(exc)
            else:
                for key, value in found.items():
                    score, _, part = key.partition("_")
                    out[f"bt_{score}_{split}" + (f"_{part}" if part else "")] = value
        for score in BT_SCORES:
            out[f"bt_{score}_{split}_status"] = reason or OK
    return out


# --------------------------------------------------------------------------------------------- files
def _row_value(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return repr(v) if isinstance(v, float) else v


def write_rows(run: RunDir, rows: list[dict]) -> None:
    """logs/evaluation_metrics.csv and .json, atomically, with exactly `EVALUATION_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EVALUATION_COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _row_value(row.get(k)) for k in EVALUATION_COLUMNS})
    atomic_write_bytes(run.logs / "evaluation_metrics.csv", buf.getvalue().encode("utf-8"))
    atomic_write_json(run.logs / "evaluation_metrics.json", [{k: row.get(k) for k in EVALUATION_COLUMNS} for row in rows])


def _merge(old: list[dict], new: list[dict], key: str) -> list[dict]:
    """Entries of `old` whose `key` is not among `new`'s, then `new` (a partial re-evaluation keeps the rest)."""
    replaced = {e.get(key) for e in new}
    return [e for e in old if isinstance(e, dict) and e.get(key) not in replaced] + new


def _write_gifs(run: RunDir, entries: list[dict], clips: dict) -> None:
    from .pipeline import write_gif

    folder = run.root / "evaluation"
    for entry in entries:
        write_gif(folder / entry["file"], clips[entry["file"]])
    index_path = folder / "index.json"
    index = _merge(read_json(index_path, []) or [], entries, "weights")
    atomic_write_json(index_path, index)
    keep = {e["file"] for e in index}
    for stale in folder.glob("*.gif"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)


def _log_tensorboard(run: RunDir, rows: list[dict], step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.tensorboard))
    try:
        for row in rows:
            for key in EVALUATION_COLUMNS:
                value = row.get(key)
                if key.startswith("num_clips") or key.endswith("_status") or isinstance(value, (str, bool)) or value is None:
                    continue
                writer.add_scalar(f"eval/{row['weights']}/{key}", float(value), step)
    finally:
        writer.close()


# --------------------------------------------------------------------------------------------- the run
def _load_metric_models(device, i3d_weights, lpips_weights):
    allow = os.environ.get(ALLOW_DOWNLOAD_ENV_VAR) == "1"
    extractor, extractor_status = metrics.load_i3d(i3d_weights, device=device, allow_download=allow)
    if extractor is None and not allow and "download disabled" in extractor_status:
        extractor_status += f" (or set {ALLOW_DOWNLOAD_ENV_VAR}=1 to let evaluation download it)"
    try:
        lpips_model, lpips_status = metrics.load_lpips("alex", weights_dir=lpips_weights, device=device)
    except ImportError as exc:
        lpips_model, lpips_status = None, f"the lpips package is not installed ({exc}): pip install lpips"
    return extractor, extractor_status, lpips_model, lpips_status


def _recognizer(cfg: Config, train_set, val_set):
    """(the back-translation recognizer of this data and split, {}) or (None, {"*": why there is none})."""
    from . import backtranslate
    from .data import caption_key, recognizer_dir

    if cfg.dataset != "synthsign" or not train_set.has_keypoints:
        return None, {"*": f"back-translation reads synthsign glosses: needs dataset synthsign, not {cfg.dataset!r}"}
    settings = backtranslate.RecognizerSettings(train_frames=cfg.bt_train_frames, epochs=cfg.bt_epochs,
                                                seed=cfg.bt_seed)
    signers = [synthsign.signer_index(s) for s in train_set.signers]
    held_out = {caption_key(r.caption, True) for r in val_set.records}  # never trained on a held-out caption
    try:
        recognizer = backtranslate.load_or_train(cfg.image_size, cfg.num_frames, signers, held_out,
                                                 recognizer_dir(cfg), settings)
    except Exception as exc:  # a failure here must not cost the other metrics: null with the reason
        return None, {"*": f"the back-translation recognizer could not be trained: {type(exc).__name__}: {exc}"}
    return recognizer, {}


def _check_run(run_dir: Union[str, Path]) -> tuple[RunDir, Config, dict]:
    """(run, config, the checkpoint's {file, step}) of a run directory, or a FileNotFoundError saying what is missing."""
    from .config import load_config_file
    from .checkpoint import latest_good_checkpoint, list_checkpoints

    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"cannot evaluate {run.root}: no such directory")
    if not run.config.is_file():
        raise FileNotFoundError(f"cannot evaluate {run.root}: it is not a run directory (no config.json); "
                                f"train a run into it first")
    cfg = load_config_file(run.config)
    if not list_checkpoints(run):
        raise FileNotFoundError(f"cannot evaluate {run.root}: {run.checkpoints} holds no checkpoint "
                                f"(the run has not saved one yet, or checkpoints/index.json is missing)")
    found = latest_good_checkpoint(run)  # the one load_run_models will use
    if found is None:
        raise FileNotFoundError(f"cannot evaluate {run.root}: no checkpoint in {run.checkpoints} verifies and loads")
    path, state = found
    return run, cfg, {"file": path.name, "step": int(state["step"])}


def evaluate_run(
    run_dir: Union[str, Path],
    num_clips: Optional[int] = None,
    weights: Optional[Sequence[str]] = None,
    device: Optional[str] = None,
    progress: bool = True,
    i3d_weights: Optional[Union[str, Path]] = None,
    lpips_weights: Optional[Union[str, Path]] = None,
    num_inference_steps: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> list[dict]:
    """Evaluate a run's latest checkpoint (see the module docstring); returns the rows, one per weight set.

    num_clips: evaluation clips (default cfg.eval_num_clips; fewer if the validation split is smaller).
    weights: subset of ("raw", "ema") (default: raw, plus ema when the run kept an EMA).
    i3d_weights / lpips_weights: files (or, for LPIPS, a folder) overriding the lookup of metrics.load_i3d/load_lpips.
    num_inference_steps: sampling steps (default cfg.num_inference_steps).
    batch_size: clips sampled together (default cfg.eval_batch_size); the clips do not depend on it.
    """
    from tqdm.auto import tqdm

    from .data import build_datasets, evaluation_clips, to_clip
    from .diffusion import build_train_scheduler
    from .pipeline import TextToSignPipeline, load_run_models
    from .runtime import autocast_factory, resolve_mixed_precision

    run, cfg, checkpoint = _check_run(run_dir)
    size_threads()  # the CPUs this process may use (affinity, cgroup quota, ablate's share)
    if run.status not in (None, "finished"):
        warnings.warn(f"{run.root} has status {run.status!r}: evaluating its latest checkpoint ({checkpoint['file']})")
    if isinstance(weights, str):
        weights = [weights]
    weight_sets = list(dict.fromkeys(weights)) if weights is not None else (["raw", "ema"] if cfg.use_ema else ["raw"])
    for w in weight_sets:
        if w not in ("raw", "ema"):
            raise ValueError(f"weights must be 'raw' or 'ema', not {w!r}")
        if w == "ema" and not cfg.use_ema:
            raise ValueError(f"{run.root} was trained without EMA (use_ema false): evaluate weights 'raw' only")
    if not weight_sets:
        raise ValueError("weights is empty: give 'raw' and/or 'ema'")
    reused = reuse_evaluation(run, cfg, weight_sets) if num_clips is None and num_inference_steps is None else None
    if reused is not None:  # a run that shares another's training and evaluation settings: its rows and clips
        write_rows(run, reused)
        return reused
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    steps = num_inference_steps or cfg.num_inference_steps
    n_wanted = int(cfg.eval_num_clips if num_clips is None else num_clips)
    if n_wanted < 1:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    batch = int(cfg.eval_batch_size if batch_size is None else batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    # data: the evaluation set (caption splits), its captions and ground truth
    train_set, val_set, _ = build_datasets(cfg)
    clips, short = evaluation_clips(cfg, train_set, val_set, n_wanted)
    if not clips:
        raise RuntimeError(f"no evaluation clips: {short}")
    if len(clips) < n_wanted and num_clips is not None:  # eval_num_clips is documented as an upper bound
        warnings.warn(f"the caption splits hold {len(clips)} usable clips; evaluating those instead of {n_wanted}")
    n = len(clips)
    captions, seeds, splits = [c.caption for c in clips], [c.seed for c in clips], [c.split for c in clips]
    references = [list(c.glosses) for c in clips]
    real = torch.stack([to_clip(c.frames) for c in clips])  # (n, 3, F, H, W)
    # whole-set metrics: the seen and novel clips (a paraphrase repeats its seen clip's real clip and glosses)
    whole = [i for i, c in enumerate(clips) if c.split != "paraphrase"]
    keypoints = [clips[i].keypoints for i in whole] if all(clips[i].keypoints is not None for i in whole) else None
    control_keys = [" ".join(clips[i].glosses) for i in whole]  # same glosses = no control pair

    extractor, extractor_status, lpips_model, lpips_status = _load_metric_models(dev, i3d_weights, lpips_weights)
    real_features = extractor.features(real[whole]) if extractor is not None and len(whole) >= 2 else None
    recognizer, bt_unavailable = _recognizer(cfg, train_set, val_set)
    if recognizer is not None:
        real_readings = recognizer.read(real)
        bt_unavailable.update({split: f"no {split} evaluation clips ({why})" for split, why in short.items()
                               if split not in splits})
    else:
        real_readings = None
    precision = resolve_mixed_precision(cfg.mixed_precision)
    if precision == "fp16" and dev.type != "cuda":
        precision = "no"  # as training's validation ran: fp16 autocast on CUDA only
    autocast = autocast_factory(dev, precision)

    def entry(i: int, weights: str, file: str, reading) -> dict:
        clip = clips[i]
        return {"prompt": clip.caption, "file": file, "weights": weights, "index": i, "split": clip.split,
                "seed": None if weights == "real" else clip.seed, "signer": clip.signer,
                "glosses": " ".join(clip.glosses), "reading": None if reading is None else " ".join(reading[i])}

    bar = tqdm(total=n * len(weight_sets), disable=not progress, desc=f"evaluate {run.root.name}", unit="clip")
    rows, gif_entries, gif_clips = [], [], {}
    for i in range(n):
        gif_entries.append(entry(i, "real", f"real_{i:03d}.gif", real_readings))
        gif_clips[f"real_{i:03d}.gif"] = real[i]
    sampling = dict(guidance_scale=cfg.guidance_scale, eta=cfg.eta)
    try:
        for w in weight_sets:
            _, denoiser, text = load_run_models(run.root, w, str(dev))
            bar.set_postfix(weights=w)
            pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
            pipe(captions[:1], seeds=[0], num_inference_steps=1, **sampling)  # warm-up, untimed
            with PeakMemory(dev) as peak:
                sync(dev)
                t0 = time.perf_counter()
                generated = pipe(captions, seeds=seeds, num_inference_steps=steps, batch_size=batch,
                                 callback=bar.update, **sampling)  # clip i from seeds[i]
                sync(dev)
                seconds = time.perf_counter() - t0
            generated = generated.float().cpu()  # (n, 3, F, H, W)
            readings = recognizer.read(generated) if recognizer is not None else None
            row = {
                "model_name": run.root.name,
                "config_name": cfg.variant,
                "weights": w,
                **compare_clips(
                    generated[whole], real[whole], keypoints, control_keys, extractor, extractor_status, lpips_model,
                    lpips_status, real_features, cfg.fvd_min_clips,
                ),
                **back_translation_metrics(readings, real_readings, references, splits, bt_unavailable),
                "val_loss": held_out_loss(denoiser, text, build_train_scheduler(cfg), val_set, cfg, dev, autocast),
                "inference_time_ms": 1000.0 * seconds / n,  # per clip
                "inference_memory_gb": peak.peak_gb,
                "num_parameters_millions": metrics.count_parameters(denoiser) / 1e6,
                "num_clips": len(whole),
                **{f"num_clips_{split}": splits.count(split) for split in CAPTION_SPLITS},
                "bt_recognizer": recognizer.info["key"][:16] if recognizer is not None else None,
                "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
            }
            rows.append({k: row.get(k) for k in EVALUATION_COLUMNS})
            for i in range(n):
                gif_entries.append(entry(i, w, f"{w}_{i:03d}.gif", readings))
                gif_clips[f"{w}_{i:03d}.gif"] = generated[i]
            del denoiser, text, pipe
    finally:
        bar.close()

    old = read_json(run.logs / "evaluation_metrics.json", []) or []
    all_rows = _merge(old if isinstance(old, list) else [], rows, "weights")
    all_rows.sort(key=lambda r: {"raw": 0, "ema": 1}.get(r.get("weights"), 2))
    write_rows(run, all_rows)
    _write_gifs(run, gif_entries, gif_clips)
    _log_tensorboard(run, rows, checkpoint["step"])
    return rows
