"""Comparing generated clips with real ones: every metric of one weight set's evaluation row, with its status.

`distribution_metrics` (FVD and KVD between the I3D features of a generated and a real set), `compare_clips` (LPIPS /
SSIM / PSNR, temporal statistics, sign fidelity from the hands found in the clips, clip by clip) and
`back_translation_metrics` (per caption split and the pooled "unseen" group) return
the metric columns of `t2s.eval.evaluate`'s rows; what each metric means, and when it is null, is in `t2s.eval.evaluate`'s
module docstring. The math of each metric is `t2s.eval.metrics`'s; the recognizer is `t2s.eval.backtranslate`'s.

Public: `compare_clips`, `back_translation_metrics`, `hand_tracks`, `dtw_matrix`, `sign_fidelity`,
`distribution_metrics`, `distribution_unavailable`, `detection_interval`, `sign_fidelity_by_group`, `DTW_*`,
`NO_KEYPOINTS`, `OK`; the column names are `t2s.rundir`'s. Imports `t2s.eval.metrics`, `t2s.eval.backtranslate`,
`t2s.synthsign.signer` (the glove colours) and `t2s.data.video`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from t2s.data.video import to_frames
from t2s.eval import backtranslate
from t2s.eval.metrics.distances import feature_statistics, frechet_distance, kernel_distance, kernel_distance_std
from t2s.eval.metrics.hands import dtw_joint_error, find_hands, hand_detection_rate
from t2s.eval.metrics.perceptual import compute_lpips, psnr, ssim
from t2s.eval.metrics.temporal import motion_magnitude, temporal_consistency
from t2s.eval.metrics.validity import FVD_JUDGED_MIN_CLIPS
from t2s.rundir import BT_COLUMNS, BT_GROUPS, BT_SCORES, DTW_GROUP_COLUMNS, DTW_GROUPS, STATUS_METRICS
from t2s.synthsign import signer as synthsign

DTW_BOOTSTRAP_SEED = 0  # the bootstrap of dtw_gap's interval: identical resamples for every run and weight set
DTW_BOOTSTRAP_RESAMPLES = 1000
DTW_INTERVAL = 0.95
# dtw_gap needs this many clips: n clips have C(2n - 1, n) distinct bootstrap resamples (35 at n = 4, 126 at n = 5), too
# few below 5 for the 2.5% tails of a 95% percentile interval -- at n = 2 every usable resample gives the same gap,
# a zero-width interval that would read as certainty.
DTW_GAP_MIN_CLIPS = 5
DTW_METRICS = ("dtw_error", "dtw_error_shuffled", "dtw_gap", "dtw_gap_low", "dtw_gap_high")
DTW_STATUS_METRICS = ("dtw_error", "dtw_error_shuffled", "dtw_gap")
NO_KEYPOINTS = "no ground-truth keypoints (synthsign only)"
OK = "ok"


def caption_dependence(own_loss: float, other_loss: Optional[float], num_clips: int) -> dict:
    """What the caption is worth to the denoiser: the held-out loss with each clip's caption replaced by another
    clip's (`val_loss_other_caption`) and the share of it the right caption saves, in percent (`caption_dependence`:
    0 = the model ignores the text). Null with the reason below 2 validation clips."""
    if num_clips < 2 or other_loss is None:
        return {"val_loss_other_caption": None, "caption_dependence": None,
                "caption_dependence_status": f"needs at least 2 validation clips to swap captions, got {num_clips}"}
    ok = math.isfinite(own_loss) and math.isfinite(other_loss) and other_loss > 0
    return {"val_loss_other_caption": other_loss if math.isfinite(other_loss) else None,
            "caption_dependence": 100.0 * (other_loss - own_loss) / other_loss if ok else None,
            "caption_dependence_status": OK if ok else "caption_dependence is not a finite number"}


# --------------------------------------------------------------------------------------------- comparing clips
def hand_tracks(clips: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
    """Hands found in clips (B, 3, F, H, W) in [-1, 1]: keypoints [(F, 2, 2)] (NaN where missing), found (B, F, 2)."""
    tracks, found = [], []
    for clip in clips:
        kp, mask = find_hands(to_frames(clip), synthsign.HAND_COLORS)
        tracks.append(kp)
        found.append(mask)
    return tracks, np.stack(found)


def dtw_matrix(tracks: Sequence[np.ndarray], keypoints: Sequence[np.ndarray], body_size: float) -> np.ndarray:
    """E (n, n): E[j, i] = DTW joint error of generated clip j's hand track against ground-truth track i."""
    return np.array([[dtw_joint_error(track, gt, body_size) for gt in keypoints] for track in tracks])


def sign_fidelity(errors: np.ndarray, captions: Sequence[str], resamples: int = DTW_BOOTSTRAP_RESAMPLES,
                  seed: int = DTW_BOOTSTRAP_SEED, level: float = DTW_INTERVAL) -> dict:
    """dtw_error, dtw_error_shuffled, dtw_gap and its bootstrap interval from E = `dtw_matrix(...)` (see `t2s.eval.evaluate`'s
    module docstring), with a status for each; captions[i] is the caption of ground truth i (and of generated clip i).
    A clip in which no hand is found has a row of NaN and is left out of every mean (`dtw_clips` counts the clips
    scored). dtw_gap is null below `DTW_GAP_MIN_CLIPS` scored clips; resamples that hold a single caption (no control
    pair) or no scored clip are skipped."""
    errors = np.asarray(errors, dtype=np.float64)
    scored = np.flatnonzero(np.isfinite(errors).any(axis=1))
    errors = errors[np.ix_(scored, scored)]
    captions = [captions[i] for i in scored]
    n = len(scored)
    out: dict = {"dtw_clips": n}
    if n == 0:
        reason = "no hand was found in any generated clip (see hand_detection_rate)"
        out.update({m: None for m in DTW_METRICS}, **{f"{m}_status": reason for m in DTW_STATUS_METRICS})
        return out
    index = {caption: k for k, caption in enumerate(dict.fromkeys(captions))}
    codes = np.array([index[c] for c in captions])
    out.update(dtw_error=float(np.nanmean(np.diag(errors))), dtw_error_status=OK)
    other = (codes[:, None] != codes[None, :]) & np.isfinite(errors)
    if not other.any():
        reason = "needs at least 2 scored evaluation clips with different captions"
        out.update(dtw_error_shuffled=None, dtw_error_shuffled_status=reason, dtw_gap=None, dtw_gap_low=None,
                   dtw_gap_high=None, dtw_gap_status=reason)
        return out
    out["dtw_error_shuffled"], out["dtw_error_shuffled_status"] = float(errors[other].mean()), OK
    if n < DTW_GAP_MIN_CLIPS:
        reason = (f"dtw_gap and its bootstrap interval need at least {DTW_GAP_MIN_CLIPS} evaluation clips with a hand "
                  f"found, got {n}")
        out.update(dtw_gap=None, dtw_gap_low=None, dtw_gap_high=None, dtw_gap_status=reason)
        return out
    out["dtw_gap"], out["dtw_gap_status"] = out["dtw_error_shuffled"] - out["dtw_error"], OK
    rng, gaps = np.random.default_rng(seed), []
    for _ in range(resamples):
        b = rng.integers(0, n, size=n)
        sub = errors[np.ix_(b, b)]
        pairs = (codes[b][:, None] != codes[b][None, :]) & np.isfinite(sub)
        matched = np.diag(sub)
        if pairs.any() and np.isfinite(matched).any():  # a resample of one caption only has no control pairs
            gaps.append(sub[pairs].mean() - np.nanmean(matched))
    tail = 100 * (1 - level) / 2
    out["dtw_gap_low"], out["dtw_gap_high"] = (float(v) for v in np.percentile(gaps, [tail, 100 - tail]))
    return out


def sign_fidelity_by_group(generated: torch.Tensor, keypoints: Optional[Sequence[np.ndarray]], glosses: Sequence[str],
                           splits: Sequence[str]) -> dict:
    """`DTW_GROUP_COLUMNS` (and a status per group): `sign_fidelity`'s gap and interval on the clips of each
    `DTW_GROUPS` group alone -- generated clips (B, 3, F, H, W) against the ground-truth tracks of their captions, the
    control pairs being the group's clips of different glosses (`glosses[i]`, space-joined). A paraphrase is scored
    against its seen clip's track (the same glosses: only the wording differs). Null with the reason without
    keypoints, or below `DTW_GAP_MIN_CLIPS` clips in a group."""
    out: dict = {c: None for c in DTW_GROUP_COLUMNS}
    if keypoints is None:
        return {**out, **{f"dtw_gap_{group}_status": NO_KEYPOINTS for group in DTW_GROUPS}}
    tracks, _ = hand_tracks(generated)
    errors = dtw_matrix(tracks, keypoints, float(generated.shape[-1]))
    for group, members in DTW_GROUPS.items():
        chosen = [i for i, split in enumerate(splits) if split in members]
        if len(chosen) < DTW_GAP_MIN_CLIPS:
            out[f"dtw_gap_{group}_status"] = (f"the {group} captions' DTW gap needs at least {DTW_GAP_MIN_CLIPS} "
                                               f"evaluation clips, got {len(chosen)}")
            continue
        found = sign_fidelity(errors[np.ix_(chosen, chosen)], [glosses[i] for i in chosen])
        out[f"dtw_gap_{group}_status"] = found["dtw_gap_status"]
        for part in ("", "_low", "_high"):
            out[f"dtw_gap_{group}{part}"] = found[f"dtw_gap{part}"]
    return out


DISTRIBUTION_METRICS = ("fvd", "kvd", "kvd_std")


def distribution_metrics(generated_features: torch.Tensor, real_features: torch.Tensor) -> dict:
    """FVD and KVD between I3D features of the generated (n, D) and the real clips (m, D): fvd, kvd, kvd_std with
    their statuses, fvd_judged (n and m at least `validity.FVD_JUDGED_MIN_CLIPS`: below, FVD is descriptive with its
    n), and the two counts. KVD's estimator is unbiased: it is judged at every n, with kvd_std."""
    n_gen, n_real = len(generated_features), len(real_features)
    n = min(n_gen, n_real)
    out: dict = {"fvd_num_generated": n_gen, "fvd_num_real": n_real, "fvd_judged": None}
    if n < 2:
        reason = f"FVD and KVD need at least 2 clips per set, got {n_gen} generated and {n_real} real"
        return {**out, **{m: None for m in DISTRIBUTION_METRICS}, **{f"{m}_status": reason for m in DISTRIBUTION_METRICS}}
    try:
        mu_g, sigma_g = feature_statistics(generated_features)
        mu_r, sigma_r = feature_statistics(real_features)
        out["fvd"], out["fvd_status"] = frechet_distance(mu_g, sigma_g, mu_r, sigma_r), OK
        out["fvd_judged"] = n >= FVD_JUDGED_MIN_CLIPS
    except ValueError as exc:
        out["fvd"], out["fvd_status"] = None, f"FVD could not be computed: {exc}"
    out["kvd"], out["kvd_status"] = kernel_distance(generated_features, real_features), OK
    if n < 4:
        out["kvd_std"], out["kvd_std_status"] = None, f"the KVD interval needs at least 4 clips per set, got {n}"
    else:
        out["kvd_std"], out["kvd_std_status"] = kernel_distance_std(generated_features, real_features), OK
    for m in DISTRIBUTION_METRICS:
        if out[m] is not None and not math.isfinite(out[m]):
            out[m], out[f"{m}_status"] = None, f"{m} is not a finite number"
    return out


def distribution_unavailable(reason: str) -> dict:
    """`distribution_metrics`' columns when there is nothing to compute them on (no I3D), each status the reason."""
    return {"fvd_num_generated": None, "fvd_num_real": None, "fvd_judged": None,
            **{m: None for m in DISTRIBUTION_METRICS}, **{f"{m}_status": reason for m in DISTRIBUTION_METRICS}}


def compare_clips(
    generated: torch.Tensor,
    real: torch.Tensor,
    keypoints: Optional[Sequence[np.ndarray]] = None,
    captions: Optional[Sequence[str]] = None,
    lpips_model=None,
    lpips_status: str = "no LPIPS model given",
) -> dict:
    """The paired metrics of `generated` clips against `real` clips of the same captions, with a status per metric:
    LPIPS / SSIM / PSNR, the temporal statistics, and sign fidelity from the hands found in the clips (FVD and KVD
    compare two sets, not pairs: `distribution_metrics`).

    generated, real: (B, 3, F, H, W) in [-1, 1], clip i of one is compared with clip i of the other.
    keypoints: ground-truth hand tracks [(F, 2, 2)] of the real clips' captions (synthsign), or None.
    captions: the caption of each clip (which pairs form the dtw_error_shuffled control); default: all distinct.
    lpips_model: a loaded LPIPS (`metrics.load_lpips`), or None with the reason in lpips_status.
    Returns {metric: float | None, f"{metric}_status": "ok" | reason}.
    """
    generated, real = generated.detach().float().cpu(), real.detach().float().cpu()
    if generated.shape != real.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and real {tuple(real.shape)} clips differ in shape")
    out: dict = {}
    found = _paired_part(generated, real, lpips_model, lpips_status)
    found += _sign_part(generated, keypoints, captions)
    for metric, value, status in found:
        ok = value is not None and math.isfinite(value)
        out[metric] = (value if isinstance(value, int) else float(value)) if ok else None
        if metric in STATUS_METRICS:
            out[f"{metric}_status"] = status if ok or status != OK else f"{metric} is not a finite number"
    return out


def _paired_part(generated: torch.Tensor, real: torch.Tensor, lpips_model, lpips_status: str) -> list[tuple]:
    """compare_clips' [(metric, value, status)] of the paired pixel and perceptual metrics and temporal statistics."""
    if lpips_model is None:
        found = [("lpips", None, lpips_status)]
    else:
        found = [("lpips", compute_lpips(generated, real, lpips_model), OK)]
    found += [("ssim", ssim(generated, real), OK), ("psnr", psnr(generated, real), OK)]
    temporal = ("temporal_consistency", "temporal_consistency_real", "motion_magnitude", "motion_magnitude_real")
    if generated.shape[2] < 2:  # temporal statistics need 2 frames
        return found + [(m, None, OK) for m in temporal]
    return found + [
        ("temporal_consistency", temporal_consistency(generated), OK),
        ("temporal_consistency_real", temporal_consistency(real), OK),
        ("motion_magnitude", motion_magnitude(generated), OK),
        ("motion_magnitude_real", motion_magnitude(real), OK),
    ]


def _sign_part(generated: torch.Tensor, keypoints: Optional[Sequence[np.ndarray]],
               captions: Optional[Sequence[str]]) -> list[tuple]:
    """compare_clips' [(metric, value, status)] of sign fidelity (null without ground-truth keypoints)."""
    n = len(generated)
    if keypoints is None:
        return [(m, None, NO_KEYPOINTS) for m in (*DTW_METRICS, "dtw_clips", *DETECTION_METRICS)]
    if len(keypoints) != n:
        raise ValueError(f"{len(keypoints)} keypoint tracks for {n} clips")
    captions = list(captions) if captions is not None else [str(i) for i in range(n)]
    if len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} clips")
    tracks, found = hand_tracks(generated)
    body_size = float(generated.shape[-1])  # the image size: errors are in image widths
    fidelity = sign_fidelity(dtw_matrix(tracks, keypoints, body_size), captions)
    detection = detection_interval(found)
    return [*((m, detection[m], OK) for m in DETECTION_METRICS), ("dtw_clips", fidelity["dtw_clips"], OK),
            *((m, fidelity[m], fidelity[f"{m}_status"]) for m in DTW_STATUS_METRICS),
            *((m, fidelity[m], OK) for m in ("dtw_gap_low", "dtw_gap_high"))]


DETECTION_METRICS = ("hand_detection_rate", "hand_detection_rate_low", "hand_detection_rate_high")


def detection_interval(found: np.ndarray, resamples: int = DTW_BOOTSTRAP_RESAMPLES, seed: int = DTW_BOOTSTRAP_SEED,
                       level: float = DTW_INTERVAL) -> dict:
    """hand_detection_rate of found (clips, F, hands) and its percentile bootstrap interval over clips (seeded as the
    DTW gap's; null below `DTW_GAP_MIN_CLIPS` clips)."""
    per_clip = np.asarray(found, dtype=bool).reshape(len(found), -1).mean(axis=1)
    out = {"hand_detection_rate": hand_detection_rate(found), "hand_detection_rate_low": None,
           "hand_detection_rate_high": None}
    if len(per_clip) >= DTW_GAP_MIN_CLIPS:
        rng = np.random.default_rng(seed)
        means = per_clip[rng.integers(0, len(per_clip), size=(resamples, len(per_clip)))].mean(axis=1)
        tail = 100 * (1 - level) / 2
        out["hand_detection_rate_low"], out["hand_detection_rate_high"] = (
            float(v) for v in np.percentile(means, [tail, 100 - tail]))
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
