"""Evaluation of a run: sample clips for held-out captions and compare them with the real clips of those captions.

    rows = evaluate_run("executed/mystudy/baseline-seed0")   # one row per weight set: raw, and ema when use_ema

What is evaluated
-----------------
* One part of the evaluation set (`t2s.eval.captions.evaluation_parts`): the test part by default (what the report scores),
  or with `part="dev"` the development part, for choosing a scale's settings. The held-out signers are divided
  between the parts and so are the captions: the two share no caption and no signer. Rows record `eval_part` and
  `eval_signers`, and the sampling settings used (`num_inference_steps`, `guidance_scale`).
* The part's evaluation set (`t2s.eval.captions.evaluation_clips`): `num_clips` (default `cfg.eval_num_clips`, an upper bound) clips
  divided among three caption splits as evenly as their candidates allow (`captions.split_sizes`; e.g. 24 -> 8 + 8 + 8,
  8 -> 3 + 3 + 2), each scored separately by back-translation:
  - `seen`: captions that occur in the training split, signed by a signer who does not sign them there. synthsign:
    distinct training gloss sequences of the part (the sample prompts first, then a fixed-seed order), each rendered
    for a held-out signer of the part; other data: the part's validation clips whose caption occurs in training.
  - `novel`: the part's validation clips whose caption (gloss sequence) never occurs in training, in split order.
  - `paraphrase` (synthsign only): the first seen captions reworded by `glosses.paraphrase` (synonyms, phrases,
    filler words: "thanks a lot" for "thank you very much"); same glosses, so the same real clip. Only a text encoder
    that maps wordings it never saw to their meaning can sign them.
  Sampling seeds: seen clip i gets seed i, novel clip j seed n_seen + j, a paraphrase its seen clip's seed (so seen
  and paraphrase differ in wording only). Clips are sampled by `t2s.pipeline.TextToSignPipeline` in batches of
  `cfg.eval_batch_size`; each clip depends on its caption and seed only (not on its batch), so every run, variant and
  weight set sees the same captions and the same initial noise. Everything is fixed: it does not vary with the
  training seed. `num_clips_seen`, `num_clips_novel`, `num_clips_paraphrase` count them.
* The whole-set metrics below (FVD to sign fidelity) use the seen and novel clips (`num_clips` = their number); a
  paraphrase repeats its seen clip's real clip and glosses, so it enters back-translation only.
* Weight sets: the run's raw weights and, when the run kept an EMA (`use_ema`), its EMA weights: a finished run's
  final safetensors weights (`weights/`), else its latest good checkpoint.
* Distribution metrics on I3D features of the generated and the real clips (`metrics.load_i3d`: StyleGAN-V's
  TorchScript I3D or an I3D state dict; the row records `feature_extractor` and the weights file's
  `feature_weights_sha256`):
  - `fvd`: Fréchet Video Distance to StyleGAN-V's protocol (fvd2048_16f at the reference scale): its real set
    and its generated clips as `t2s.eval.fvd` says. The row records `fvd_num_generated`, `fvd_num_real` and
    `fvd_real_set`; `fvd_judged` is true from `metrics.validity.FVD_JUDGED_MIN_CLIPS` clips per set (below, FVD is
    descriptive). Comparable only between rows with the same counts, real set and `feature_extractor`.
  - `kvd`: kernel video distance (Unterthiner et al. 2018): unbiased polynomial-kernel MMD^2 on the same features
    (`metrics.kernel_distance`), usable at small n (>= 2), expectation 0 when the two distributions are equal.
    `kvd_std`: its standard error from 100 seeded subsets of min(n // 2, 1000) clips (delete-d jackknife,
    `metrics.kernel_distance_std`; needs n >= 4). Read kvd +- 2 kvd_std.
* LPIPS / SSIM / PSNR (frame by frame against the real clip of the same caption, averaged over frames and clips),
  temporal consistency and motion magnitude of the generated clips and, for reference, of the real ones (`*_real`).
* Held-out diffusion loss (`held_out_loss`): the training engine's fixed-timestep, fixed-noise validation loss
  on the first `val_max_clips` validation clips of the part, for each weight set (column `val_loss`; the training's
  validation reads the development part's); the same with each clip
  conditioned on the next clip's caption (`val_loss_other_caption`), and the share of that loss the right caption
  saves, in percent (`caption_dependence`: 0 = the denoiser ignores the text; the first sign that it follows it).
* Sign fidelity (synthsign only: a dataset with ground-truth keypoints): hands are found in every generated frame
  by colour (`metrics.find_hands` with `synthsign.HAND_COLORS`), and E[j, i] = `metrics.dtw_joint_error` of generated
  clip j's hands against the ground-truth track of evaluation clip i's caption, with coordinates divided by the image
  size (1.0 = one image width): per hand, dynamic time warping over the frames where the hand is found in the generated
  clip and present in the ground truth (the mean joint error of SLP papers), averaged over hands. Detection is its own
  number: `hand_detection_rate` (the fraction of (frame, hand) slots with a hand found, with a bootstrap interval over
  clips `_low` / `_high`). A clip in which no hand is found has no position error: it leaves the DTW means and their
  controls (`dtw_clips` counts the clips scored).
  - `dtw_error`: mean of E[i, i] (each clip against its own caption).
  - `dtw_error_shuffled` (the control): mean of E[j, i] over ALL pairs j != i whose captions differ -- the same
    generated clips and ground truths, re-paired; no extra sampling.
  - `dtw_gap` = dtw_error_shuffled - dtw_error: how much closer a clip is to its own caption's signing than to other
    captions'; > 0 if the model follows its captions, ~0 if it ignores them. `dtw_gap_low` / `dtw_gap_high`: 95%
    percentile bootstrap interval over clips (`DTW_BOOTSTRAP_RESAMPLES` resamples of the n clips with replacement,
    generator seeded `DTW_BOOTSTRAP_SEED`; pairs re-formed within each resample); null below `DTW_GAP_MIN_CLIPS` = 5
    clips, where a bootstrap has too few distinct resamples for an interval.
  - `dtw_gap_seen`, `dtw_gap_unseen` (with `_low` / `_high`): the same gap on the seen captions alone and on the
    unseen ones (novel and paraphrased pooled, as back-translation's "unseen"; a paraphrase is scored against its seen
    clip's track), each group's control pairs within the group (`t2s.eval.compare.sign_fidelity_by_group`).
* Back-translation (synthsign only; `t2s.eval.backtranslate`): a small recognizer, trained once per data and split on
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
* `logs/evaluation_metrics.csv`, `logs/evaluation_metrics.json`: the test part's rows (`EVALUATION_COLUMNS`), one per
  weight set; a weight set not evaluated this time keeps its previous row. Written atomically. The development
  part's: `logs/evaluation_metrics_dev.*` and `evaluation_dev/` (`RunDir.evaluation_paths`).
* `tensorboard/`: the numbers as scalars `eval/<weights>/<metric>` at the checkpoint's step.
* `evaluation/<weights>_<i>.gif` (generated), `evaluation/real_<i>.gif` (the reference clip), and
  `evaluation/index.json`: [{prompt, file, weights ("raw" | "ema" | "real"), index, split, seed, signer, glosses (the
  reference, space-joined), reading (the recognizer's reading of that clip, space-joined; null without one)}].

Metric weights are looked up as `t2s.eval.metrics.video_features.load_i3d` / `load_lpips` document (argument, environment variable,
cache folder). When none is found, the default one (StyleGAN-V's TorchScript I3D; torchvision's AlexNet) is downloaded
into its cache and kept only if its SHA-256 matches the pinned one -- unless `T2S_OFFLINE=1` is set or no network
answers within 3 s (`t2s.eval.metrics.files.download_blocker`): then the metric is null and its status says why.

This room: the orchestration of one run's evaluation (arguments, the evaluation set and its references, sampling each
weight set, the rows). The metrics of a row are `t2s.eval.compare`'s, FVD's protocol `t2s.eval.fvd`'s, the files
`t2s.eval.results`', the columns `t2s.rundir`'s.
"""
from __future__ import annotations

import datetime as _dt
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from t2s.config import Config, load_config_file
from t2s.data.datasets import ClipDataset
from t2s.data.splits import PARTS, build_datasets, evaluation_parts, part_indices
from t2s.data.video import to_clip
from t2s.diffusion import build_train_scheduler, held_out_loss
from t2s.engine.checkpoint import list_checkpoints, load_run_weights
from t2s.engine.phases import phase_timer
from t2s.engine.runtime import PeakMemory, computing, rebalance_threads, run_autocast, sync
from t2s.eval import backtranslate, fvd, results
from t2s.eval.captions import EvaluationClip, evaluation_clips
from t2s.eval.compare import (
    back_translation_metrics,
    caption_dependence,
    compare_clips,
    distribution_metrics,
    distribution_unavailable,
    sign_fidelity_by_group,
)
from t2s.eval.metrics.perceptual import load_lpips
from t2s.eval.metrics.video_features import VideoFeatureExtractor, load_i3d
from t2s.model import count_parameters
from t2s.pipeline import TextToSignPipeline, load_run_models
from t2s.rundir import CAPTION_SPLITS, EVALUATION_COLUMNS, RunDir


# --------------------------------------------------------------------------------------------- the run
def _load_metric_models(device, i3d_weights, lpips_weights):
    """I3D and LPIPS with their statuses; each loader downloads an absent default file under the download policy."""
    extractor, extractor_status = load_i3d(i3d_weights, device=device)
    try:
        lpips_model, lpips_status = load_lpips("alex", weights_dir=lpips_weights, device=device)
    except ImportError as exc:
        lpips_model, lpips_status = None, f"the lpips package is not installed ({exc}): pip install lpips"
    return extractor, extractor_status, lpips_model, lpips_status


def _check_run(run_dir: Union[str, Path], part: str = "test", **settings) -> tuple[RunDir, Config, dict]:
    """(run, its config with the evaluation settings asked for (`settings`: config keys, None = the run's), its
    weights' {file, step}: the final weights or the latest checkpoint) of a run directory, or a FileNotFoundError
    saying what is missing (a ValueError for a bad part or setting)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"cannot evaluate {run.root}: no such directory")
    if not run.config.is_file():
        raise FileNotFoundError(f"cannot evaluate {run.root}: it is not a run directory (no config.json); "
                                f"train a run into it first")
    cfg = load_config_file(run.config)
    asked = {k: v for k, v in settings.items() if v is not None}
    if asked:
        cfg = cfg.replace(**asked)  # checked like a config file's keys (ranges, choices)
    if not run.weights_raw.is_file() and not list_checkpoints(run):
        raise FileNotFoundError(f"cannot evaluate {run.root}: it has no final weights ({run.weights.name}/) and "
                                f"{run.checkpoints} holds no checkpoint (the run has not saved one yet, or "
                                f"checkpoints/index.json is missing)")
    found = load_run_weights(run)  # the weights load_run_models will use
    if found is None:
        raise FileNotFoundError(f"cannot evaluate {run.root}: no checkpoint in {run.checkpoints} verifies and loads")
    return run, cfg, {"file": found["source"].name, "step": found["step"]}



def _check_arguments(run: RunDir, cfg: Config, num_clips: Optional[int], weights, batch_size: Optional[int]
                     ) -> tuple[list[str], int, int]:
    """(weight sets, clips wanted, clips sampled together) from `evaluate_run`'s arguments and the run's config; a
    ValueError names a bad argument."""
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
    n_wanted = int(cfg.eval_num_clips if num_clips is None else num_clips)
    if n_wanted < 1:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    batch = int(cfg.eval_batch_size if batch_size is None else batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return weight_sets, n_wanted, batch


@dataclass
class _EvaluationSet:
    """The evaluation clips with their captions, seeds and ground truth (see the module docstring)."""

    clips: list[EvaluationClip]
    short: dict  # {split: why it is empty, or short of its share}
    real: torch.Tensor  # the real clips (n, 3, F, H, W) in [-1, 1]
    whole: list[int]  # the clips of the whole-set metrics: seen and novel (a paraphrase repeats its seen clip's real clip)
    keypoints: Optional[list[np.ndarray]]  # the whole-set clips' ground-truth hand tracks, or None
    control_keys: list[str]  # the whole-set clips' glosses, space-joined: same glosses = no control pair

    @property
    def captions(self) -> list[str]:
        return [c.caption for c in self.clips]

    @property
    def seeds(self) -> list[int]:
        return [c.seed for c in self.clips]

    @property
    def splits(self) -> list[str]:
        return [c.split for c in self.clips]

    @property
    def references(self) -> list[list[str]]:
        return [list(c.glosses) for c in self.clips]

    @property
    def all_keypoints(self) -> Optional[list[np.ndarray]]:
        """Every clip's ground-truth hand track (a paraphrase's is its seen clip's), or None without keypoints."""
        return None if any(c.keypoints is None for c in self.clips) else [c.keypoints for c in self.clips]

    @property
    def gloss_keys(self) -> list[str]:
        return [" ".join(c.glosses) for c in self.clips]


def _evaluation_set(cfg: Config, train_set: ClipDataset, val_set: ClipDataset, n_wanted: int,
                    num_clips: Optional[int], part: str) -> _EvaluationSet:
    """The caption splits' clips of one part (`captions.evaluation_clips`); a RuntimeError if there are none."""
    clips, short = evaluation_clips(cfg, train_set, val_set, n_wanted, part)
    if not clips:
        raise RuntimeError(f"no evaluation clips: {short}")
    if len(clips) < n_wanted and num_clips is not None:  # eval_num_clips is documented as an upper bound
        warnings.warn(f"the caption splits hold {len(clips)} usable clips; evaluating those instead of {n_wanted}")
    whole = [i for i, c in enumerate(clips) if c.split != "paraphrase"]
    keypoints = [clips[i].keypoints for i in whole] if all(clips[i].keypoints is not None for i in whole) else None
    return _EvaluationSet(clips, short, torch.stack([to_clip(c.frames) for c in clips]), whole, keypoints,
                          [" ".join(clips[i].glosses) for i in whole])


@dataclass
class _References:
    """The metric models and what they make of the real clips, shared by every weight set."""

    extractor: Optional[VideoFeatureExtractor]
    extractor_status: str
    lpips_model: object
    lpips_status: str
    real_features: Optional[torch.Tensor]  # I3D features of FVD's real set (`fvd.real_features`)
    real_set: Optional[str]  # which real clips those are, in words (the rows' fvd_real_set)
    recognizer: Optional[backtranslate.Recognizer]
    real_readings: Optional[list[list[str]]]  # the recognizer's reading of every real clip
    bt_unavailable: dict  # {split or "*": why back-translation cannot score it}


def _references(cfg: Config, train_set: ClipDataset, val_set: ClipDataset, evaluation: _EvaluationSet,
                device: torch.device, i3d_weights, lpips_weights, phase=lambda name: nullcontext()) -> _References:
    """Load the metric models and the recognizer, and compute the real clips' features and readings (`phase(name)`
    times the parts: t2s.engine.phases)."""
    with phase("eval_setup"):
        extractor, extractor_status, lpips_model, lpips_status = _load_metric_models(device, i3d_weights, lpips_weights)
    with phase("fvd"):
        real_features, real_set = (fvd.real_features(cfg, train_set, evaluation.whole, evaluation.real, extractor)
                                   if extractor is not None else (None, None))
    with phase("recognizer"):
        recognizer, bt_unavailable = backtranslate.recognizer_for(cfg, train_set, val_set)
        real_readings = recognizer.read(evaluation.real) if recognizer is not None else None
    if recognizer is not None:
        splits = evaluation.splits
        bt_unavailable.update({split: f"no {split} evaluation clips ({why})" for split, why in evaluation.short.items()
                               if split not in splits})
    return _References(extractor, extractor_status, lpips_model, lpips_status, real_features, real_set, recognizer,
                       real_readings, bt_unavailable)


@dataclass
class _Evaluation:
    """What one `evaluate_run` shares across its weight sets."""

    run: RunDir
    cfg: Config
    device: torch.device
    steps: int  # sampling steps
    batch: int  # clips sampled together
    val_set: ClipDataset  # the part's validation clips: the held-out loss reads them
    part: str  # "test" or "dev"
    signers: str  # the part's held-out signers, as `EvaluationParts.describe` says them
    clips: _EvaluationSet
    references: _References
    autocast: Callable

    def phase(self, name: str):
        """Time a part of this evaluation into the run's logs/phases.json (`_phase_of`)."""
        return _phase_of(self.run, self.part)(name)


class _Progress:
    """The evaluation's tqdm bar and the run's progress.json (phase "evaluating": clips generated of all, clips/s),
    advanced together by the pipeline's callback."""

    def __init__(self, run: RunDir, total: int, show: bool):
        self.run, self.total, self.done, self.weights = run, total, 0, None
        self.bar = tqdm(total=total, disable=not show, desc=f"evaluate {run.root.name}", unit="clip")
        self.start = time.perf_counter()
        self.write("evaluating")

    def write(self, phase: str) -> None:
        seconds = time.perf_counter() - self.start
        self.run.write_progress(phase, self.done, self.total, "clip", weights=self.weights,
                                rate=self.done / seconds if self.done and seconds > 0 else None)

    def set_weights(self, weights: str) -> None:
        self.weights = weights
        self.bar.set_postfix(weights=weights)
        self.write("evaluating")

    def update(self, clips: int) -> None:
        self.done += clips
        self.bar.update(clips)
        self.write("evaluating")
        rebalance_threads()  # other kit processes started or ended here: this one's share of the CPUs

    def close(self) -> None:
        self.bar.close()


def _sample(pipe: TextToSignPipeline, ev: _Evaluation, bar: _Progress) -> tuple[torch.Tensor, float, float]:
    """Every evaluation clip, clip i from seed i's noise: (clips (n, 3, F, H, W) float32 on the CPU, seconds, peak
    memory in GB). A one-step warm-up runs first, untimed."""
    sampling = dict(guidance_scale=ev.cfg.guidance_scale, eta=ev.cfg.eta)
    captions = ev.clips.captions
    pipe(captions[:1], seeds=[0], num_inference_steps=1, **sampling)  # warm-up, untimed
    with PeakMemory(ev.device) as peak:
        sync(ev.device)
        t0 = time.perf_counter()
        generated = pipe(captions, seeds=ev.clips.seeds, num_inference_steps=ev.steps, batch_size=ev.batch,
                         callback=bar.update, **sampling)  # clip i from seeds[i]
        sync(ev.device)
        seconds = time.perf_counter() - t0
    return generated.float().cpu(), seconds, peak.peak_gb


def _distribution(ev: "_Evaluation", pipe: TextToSignPipeline, generated: torch.Tensor, bar: "_Progress") -> dict:
    """FVD and KVD of this weight set (`compare.distribution_metrics`) on `fvd.generated_features`."""
    refs = ev.references
    if refs.extractor is None:
        return distribution_unavailable(refs.extractor_status)
    features = fvd.generated_features(pipe, refs.extractor, generated, ev.clips.captions, ev.clips.whole,
                                      ev.cfg.fvd_num_generated, steps=ev.steps, batch=ev.batch,
                                      guidance_scale=ev.cfg.guidance_scale, eta=ev.cfg.eta, callback=bar.update)
    return {**distribution_metrics(features, refs.real_features), "fvd_real_set": refs.real_set,
            "feature_extractor": refs.extractor.name, "feature_weights_sha256": refs.extractor.sha256}


def _evaluate_weights(ev: _Evaluation, weights: str, bar: _Progress
                      ) -> tuple[dict, torch.Tensor, Optional[list[list[str]]]]:
    """Sample the evaluation clips with one weight set and score them: (its row, the generated clips (n, 3, F, H, W),
    the recognizer's readings of them or None)."""
    with ev.phase("eval_sampling"):
        _, denoiser, text = load_run_models(ev.run.root, weights, str(ev.device))
        bar.set_weights(weights)
        pipe = TextToSignPipeline.from_config(denoiser, text, ev.cfg)
        generated, seconds, peak_gb = _sample(pipe, ev, bar)
    refs, clips, whole, splits = ev.references, ev.clips, ev.clips.whole, ev.clips.splits
    with ev.phase("fvd"):  # the extra clips' sampling and the I3D features
        distribution = _distribution(ev, pipe, generated, bar)
    with ev.phase("metrics"):
        readings = refs.recognizer.read(generated) if refs.recognizer is not None else None
        metrics = {
            **compare_clips(generated[whole], clips.real[whole], clips.keypoints, clips.control_keys, refs.lpips_model,
                            refs.lpips_status),
            **sign_fidelity_by_group(generated, clips.all_keypoints, clips.gloss_keys, splits),
            **back_translation_metrics(readings, refs.real_readings, clips.references, splits, refs.bt_unavailable),
        }
    with ev.phase("held_out_loss"):
        held_out = _held_out(ev, denoiser, text)
    row = {
        "model_name": ev.run.root.name,
        "config_name": ev.cfg.variant,
        "weights": weights,
        **distribution,
        **metrics,
        **held_out,
        "inference_time_ms": 1000.0 * seconds / len(clips.clips),  # per clip
        "inference_memory_gb": peak_gb,
        "num_parameters_millions": count_parameters(denoiser) / 1e6,
        "eval_part": ev.part,
        "eval_signers": ev.signers,
        "num_inference_steps": ev.steps,
        "guidance_scale": ev.cfg.guidance_scale,
        "num_clips": len(whole),
        **{f"num_clips_{split}": splits.count(split) for split in CAPTION_SPLITS},
        "bt_recognizer": refs.recognizer.info["key"][:16] if refs.recognizer is not None else None,
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return {k: row.get(k) for k in EVALUATION_COLUMNS}, generated, readings


def _held_out(ev: _Evaluation, denoiser, text) -> dict:
    """The held-out loss of these weights, and with each clip's caption swapped for another's (caption_dependence)."""
    n = min(len(ev.val_set), ev.cfg.val_max_clips)
    args = (denoiser, text, build_train_scheduler(ev.cfg), ev.val_set, ev.cfg, ev.device, ev.autocast)
    own = held_out_loss(*args)
    other = held_out_loss(*args, other_captions=True) if n >= 2 else None
    return {"val_loss": own, **caption_dependence(own, other, n)}


def _phase_of(run: RunDir, part: str):
    """phase_timer for this evaluation's parts; the development part's phases are named with a _dev suffix."""
    return lambda name: phase_timer(run, name if part == "test" else f"{name}_dev")


def _evaluation(run: RunDir, cfg: Config, dev: torch.device, part: str, n_wanted: int, num_clips: Optional[int],
                steps: int, batch: int, i3d_weights, lpips_weights) -> _Evaluation:
    """What every weight set of one evaluation shares: the part's clips and validation clips, the references."""
    phase = _phase_of(run, part)
    with phase("eval_setup"):
        train_set, val_set, _ = build_datasets(cfg)
        clips = _evaluation_set(cfg, train_set, val_set, n_wanted, num_clips, part)
    references = _references(cfg, train_set, val_set, clips, dev, i3d_weights, lpips_weights, phase)
    held_out = val_set.subset(part_indices(cfg, train_set, val_set, part))
    return _Evaluation(run, cfg, dev, steps, batch, held_out, part,
                       evaluation_parts(cfg, train_set, val_set).describe(part), clips, references,
                       run_autocast(dev, cfg.mixed_precision))


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
    part: str = "test",
    guidance_scale: Optional[float] = None,
    fvd_num_generated: Optional[int] = None,
    fvd_real_split: Optional[str] = None,
) -> list[dict]:
    """Evaluate a run's final weights or latest checkpoint (see the module docstring); returns the rows, one per weight set.

    num_clips: evaluation clips (default cfg.eval_num_clips; fewer if the validation split is smaller).
    weights: subset of ("raw", "ema") (default: raw, plus ema when the run kept an EMA).
    i3d_weights / lpips_weights: files (or, for LPIPS, a folder) overriding the lookup of metrics.load_i3d/load_lpips.
    num_inference_steps: sampling steps (default cfg.num_inference_steps).
    batch_size: clips sampled together (default cfg.eval_batch_size); the clips do not depend on it.
    part: "test" (what the report reads: logs/evaluation_metrics.*, evaluation/) or "dev", the development part for
    choosing settings (logs/evaluation_metrics_dev.*, evaluation_dev/); they share no caption and no signer.
    guidance_scale: classifier-free guidance (default cfg.guidance_scale).
    fvd_num_generated / fvd_real_split: FVD's generated clips and where its real clips come from (default: the run's
    config; docs/evaluation.md, "FVD").
    """
    run, cfg, checkpoint = _check_run(run_dir, part, guidance_scale=guidance_scale,
                                      fvd_num_generated=fvd_num_generated, fvd_real_split=fvd_real_split)
    with computing():  # the CPUs this process may use (affinity, cgroup quota, ablate's share, other kit processes)
        return _evaluate(run, cfg, checkpoint, part, num_clips, weights, device, progress, i3d_weights, lpips_weights,
                         num_inference_steps, batch_size)


def _evaluate(run: RunDir, cfg: Config, checkpoint: dict, part: str, num_clips, weights, device, progress: bool,
              i3d_weights, lpips_weights, num_inference_steps, batch_size) -> list[dict]:
    """`evaluate_run` once the process has its threads."""
    if run.status not in (None, "finished"):
        warnings.warn(f"{run.root} has status {run.status!r}: evaluating its latest checkpoint ({checkpoint['file']})")
    weight_sets, n_wanted, batch = _check_arguments(run, cfg, num_clips, weights, batch_size)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if run.status != "running":  # not while a training writes there: of a process killed mid-write
        run.remove_unfinished_writes()
    run.write_progress("evaluating", 0, 0, "clip")  # 0 of 0: the data and metric models load first
    ev = _evaluation(run, cfg, dev, part, n_wanted, num_clips, num_inference_steps or cfg.num_inference_steps, batch,
                     i3d_weights, lpips_weights)
    clips, references = ev.clips, ev.references
    n = len(clips.clips)
    gif_entries = [results.gif_entry(clips.clips[i], i, "real", references.real_readings) for i in range(n)]
    gif_clips = {RunDir.evaluation_gif_name("real", i): clips.real[i] for i in range(n)}
    rows = []
    extra = len(fvd.extra_clips(clips.captions, clips.whole, cfg.fvd_num_generated)[0]) if references.extractor else 0
    bar = _Progress(run, (n + extra) * len(weight_sets), progress)
    try:
        for w in weight_sets:
            row, generated, readings = _evaluate_weights(ev, w, bar)
            rows.append(row)
            gif_entries += [results.gif_entry(clips.clips[i], i, w, readings) for i in range(n)]
            gif_clips.update({RunDir.evaluation_gif_name(w, i): generated[i] for i in range(n)})
    finally:
        bar.close()
    with ev.phase("eval_writing"):
        results.write_results(run, cfg, rows, gif_entries, gif_clips, checkpoint["step"], part)
    bar.write("evaluated")
    return rows
