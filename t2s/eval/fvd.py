"""FVD's protocol (StyleGAN-V's fvd2048_16f at the reference scale): which clips its two sets hold and their I3D
features. The distance itself (and KVD on the same features) is `t2s.eval.compare.distribution_metrics`'.

* Generated: `cfg.fvd_num_generated` clips: the evaluation's seen and novel clips first (already sampled for the other
  metrics), then more of the same captions, clip j (j >= the n seen and novel clips) signing caption j mod n from seed
  `FVD_SEED_BASE` + j, sampled and featurised batch by batch.
* Real: up to as many clips of `cfg.fvd_real_split`: "train", the training split, drawn with seed `FVD_REAL_SEED` (the
  same clips for every run of a data set; StyleGAN-V draws its real clips from the data set), or "held_out", the
  evaluation's own real clips (held-out signers).
* `fvd_judged` is true from `metrics.validity.FVD_JUDGED_MIN_CLIPS` clips per set (a simulation: below it a collapsed
  generator is not ranked below a faithful one in 95% of draws); below, FVD is descriptive. FVDs compare only between
  rows with the same counts, real set and feature extractor.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from t2s.config import Config
from t2s.data.datasets import ClipDataset
from t2s.eval.metrics.video_features import VideoFeatureExtractor

FVD_REAL_SEED = 0  # the draw of FVD's real clips from the training split: the same clips for every run of a data set
FVD_SEED_BASE = 1_000_000  # the seed of FVD's generated clip j beyond the evaluation's own clips: FVD_SEED_BASE + j


def real_features(cfg: Config, train_set: ClipDataset, whole: Sequence[int], real: torch.Tensor,
                  extractor: VideoFeatureExtractor, batch: int = 16) -> tuple[torch.Tensor, str]:
    """FVD's real set (`cfg.fvd_real_split`; `whole`: the indices of the evaluation's seen and novel clips in `real`,
    its real clips): (their I3D features, what they are in words)."""
    wanted = cfg.fvd_num_generated
    if cfg.fvd_real_split == "train":
        chosen = np.random.default_rng(FVD_REAL_SEED).permutation(len(train_set))[:wanted]
        features = [extractor.features(torch.stack([train_set[int(i)][0] for i in chosen[k:k + batch]]))
                    for k in range(0, len(chosen), batch)]
        words = (f"train: {len(chosen)} of the training split's {len(train_set)} clips "
                 f"({len(train_set.signers)} signers), drawn with seed {FVD_REAL_SEED}")
    else:
        chosen = list(whole[:wanted])
        features = [extractor.features(real[chosen])] if chosen else []
        words = f"held_out: the evaluation's {len(chosen)} real clips of seen and novel captions (held-out signers)"
    return (torch.cat(features) if features else torch.zeros(0, 400)), words


def extra_clips(captions: Sequence[str], whole: Sequence[int], wanted: int) -> tuple[list[str], list[int]]:
    """The captions and seeds of the generated clips beyond the evaluation's own (`captions`: every evaluation clip's;
    `whole`: the seen and novel ones' indices): clip j signs caption `whole[j mod n]` from seed FVD_SEED_BASE + j."""
    if not whole:
        return [], []
    extra = range(len(whole), wanted)
    return [captions[whole[j % len(whole)]] for j in extra], [FVD_SEED_BASE + j for j in extra]


def generated_features(pipe, extractor: VideoFeatureExtractor, generated: torch.Tensor, captions: Sequence[str],
                       whole: Sequence[int], wanted: int, steps: int, batch: int, guidance_scale: float, eta: float,
                       callback: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """The I3D features of FVD's generated set: the evaluation's own seen and novel clips (`generated`, every
    evaluation clip as sampled) and `extra_clips`' sampled by `pipe` (a `TextToSignPipeline`) `batch` at a time."""
    features = [extractor.features(generated[list(whole[:wanted])])]
    more_captions, seeds = extra_clips(captions, whole, wanted)
    for k in range(0, len(more_captions), batch):
        more = pipe(more_captions[k:k + batch], seeds=seeds[k:k + batch], num_inference_steps=steps, batch_size=batch,
                    guidance_scale=guidance_scale, eta=eta, callback=callback)
        features.append(extractor.features(more.float().cpu()))
    return torch.cat(features)
