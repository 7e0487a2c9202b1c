"""The evaluation set: held-out captions in three caption splits (seen, novel, paraphrase) with their real clips, in
two parts that share no caption and no signer: the development part (for choosing a scale's settings, and the
training's validation loss) and the test part (what `evaluate` scores and the report shows).

`evaluation_clips(config, train, val, num_clips, part)` picks a part's clips (see its docstring); `split_sizes`
divides a clip budget among the splits. Which signers and captions each part holds is `t2s.data.splits`'
(`evaluation_parts`).

Public: `evaluation_clips`, `EvaluationClip`, `split_sizes`. The parts and `caption_key` are `t2s.data.splits`'; the
datasets it reads are `t2s.data.datasets.ClipDataset`s.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from t2s.config import Config
from t2s.data.splits import EVAL_CAPTION_SEED, caption_key, evaluation_parts, part_indices, seen_order
from t2s.rundir import CAPTION_SPLITS
from t2s.synthsign import glosses
from t2s.synthsign import signer as synthsign

if TYPE_CHECKING:
    from t2s.data.datasets import ClipDataset



@dataclass(frozen=True)
class EvaluationClip:
    """One evaluation clip: the caption the model is given, what it must sign, and the real clip that signs it."""

    split: str  # "seen", "novel" or "paraphrase"
    caption: str
    glosses: tuple[str, ...]  # synthsign: `glosses.gloss_sequence(caption)`; other data: the caption's words
    signer: str  # the real clip's signer
    seed: int  # the generated clip's sampling seed
    source: str  # "validation <id>", or "rendered with seed <render seed>" (a seen caption by a held-out signer)
    frames: np.ndarray  # the real clip, uint8 (F, H, W, 3)
    keypoints: Optional[np.ndarray]  # its ground-truth hand centres (F, 2, 2), or None


def split_sizes(total: int, capacities: Sequence[int]) -> list[int]:
    """`total` clips divided among splits as evenly as their capacities allow: equal shares (the remainder to the first
    splits), each capped by its capacity, and what a capped split leaves given one by one to the others in order."""
    sizes = [min(total // len(capacities) + (i < total % len(capacities)), c) for i, c in enumerate(capacities)]
    left = total - sum(sizes)
    while left > 0 and any(s < c for s, c in zip(sizes, capacities)):
        for i, c in enumerate(capacities):
            if left > 0 and sizes[i] < c:
                sizes[i], left = sizes[i] + 1, left - 1
    return sizes


def evaluation_clips(config: Config, train: ClipDataset, val: ClipDataset, num_clips: int,
                     part: str = "test") -> tuple[list[EvaluationClip], dict]:
    """One part's evaluation set (`evaluation_parts`: "test", what is scored, or "dev"), split by caption:
    ([EvaluationClip] ordered seen, novel, paraphrase; {split: why it is empty, or short of its share}).

    * seen: captions of the part whose `caption_key` occurs in the training split, each signed by a signer who does not
      sign it in training. synthsign: the distinct training gloss sequences, the sample prompts' first, then the rest
      in an `EVAL_CAPTION_SEED` order, each RENDERED for a held-out signer of the part (round-robin over those who do
      not sign it in training; the part's signers if none) with a seeded render seed. Other data: the part's
      validation clips whose caption occurs in training, in split order.
    * novel: the part's validation clips, in split order, whose caption key does not occur in training.
    * paraphrase (synthsign only): the first seen clips with their caption reworded by `glosses.paraphrase` (same
      glosses, so the same real clip and signer); sampled with the seen clip's seed, so seen and paraphrase differ in
      wording only.
    num_clips is divided by `split_sizes` (capacities: distinct seen captions, novel validation clips, seen clips).
    Sampling seeds: seen clip i gets seed i, novel clip j gets n_seen + j. Validation clips that do not decode are
    skipped with a warning. Deterministic.
    """
    synth = train.has_keypoints and config.dataset == "synthsign"
    splits = CAPTION_SPLITS if synth else CAPTION_SPLITS[:2]
    parts = evaluation_parts(config, train, val)
    train_keys: dict[tuple, str] = {}
    train_signers: dict[tuple, set] = {}
    for record in train.records:
        key = caption_key(record.caption, synth)
        train_keys.setdefault(key, record.caption)
        train_signers.setdefault(key, set()).add(record.signer)
    val_seen, val_novel = [], []
    for i in part_indices(config, train, val, part):
        (val_seen if caption_key(val.records[i].caption, synth) in train_keys else val_novel).append(i)
    rng = np.random.default_rng(EVAL_CAPTION_SEED)  # drawn in this order: seen-caption order, render seeds, paraphrases
    if synth:
        seen_keys = [k for k in seen_order(config, train_keys, synth, rng) if parts.captions.get(k) == part]
        capacities = [len(seen_keys), len(val_novel), len(seen_keys)]
    else:
        capacities = [len(val_seen), len(val_novel)]
    sizes = dict(zip(splits, split_sizes(num_clips, capacities)))
    if synth:
        sizes["paraphrase"] = min(sizes["paraphrase"], sizes["seen"])

    if synth:
        clips = _rendered_seen(config, train, parts.part_signers(part), seen_keys[: sizes["seen"]], train_keys,
                               train_signers, rng)
    else:
        clips = _from_validation(val, "seen", val_seen, sizes["seen"], 0, synth)
    clips += _from_validation(val, "novel", val_novel, sizes["novel"], len(clips), synth)
    if synth:
        for seen in clips[: sizes["paraphrase"]]:
            clips.append(dataclasses.replace(seen, split="paraphrase", caption=glosses.paraphrase(seen.caption, rng)))
    return clips, _shortfalls(clips, splits, capacities, sizes, num_clips, synth)


def _from_validation(val: ClipDataset, split: str, indices: list[int], wanted: int, first_seed: int,
                     synth: bool) -> list[EvaluationClip]:
    """Up to `wanted` evaluation clips of `split` from the validation clips `indices`, in order, skipping (with a
    warning) those that do not decode; sampling seeds first_seed, first_seed + 1, ..."""
    out = []
    for i in indices:
        if len(out) == wanted:
            break
        try:
            frames = val.frames(i)
        except Exception as exc:  # decoders raise many types; skip the clip as training does
            warnings.warn(f"evaluation skips validation clip {val.records[i].video}: {type(exc).__name__}: {exc}")
            continue
        record = val.records[i]
        out.append(EvaluationClip(split, record.caption, caption_key(record.caption, synth), record.signer,
                                  first_seed + len(out), f"validation {record.id}", np.asarray(frames),
                                  val.keypoints(i)))
    return out


def _rendered_seen(config: Config, train: ClipDataset, part_signers: list[str], seen_keys: list[tuple],
                   train_keys: dict[tuple, str], train_signers: dict[tuple, set],
                   rng: np.random.Generator) -> list[EvaluationClip]:
    """synthsign's seen clips: training caption i (of `seen_keys`) rendered for one of the part's held-out signers who
    does not sign it in training (round-robin; any of them if all do), with a render seed drawn from `rng`; sampling
    seed i."""
    clips = []
    held_out = [synthsign.signer_index(s) for s in part_signers]
    for i, key in enumerate(seen_keys):
        busy = {synthsign.signer_index(s) for s in train_signers[key]}
        choices = [s for s in held_out if s not in busy] or held_out
        signer, render_seed = choices[i % len(choices)], int(rng.integers(0, 2**31))
        caption = train_keys[key]
        frames, keypoints = synthsign.render_clip(caption, signer, config.num_frames, config.image_size, render_seed)
        clips.append(EvaluationClip("seen", caption, key, synthsign.signer_name(signer), i,
                                    f"rendered with seed {render_seed}", frames, keypoints))
    return clips


def _shortfalls(clips: list[EvaluationClip], splits: Sequence[str], capacities: Sequence[int], sizes: dict,
                num_clips: int, synth: bool) -> dict:
    """{split: why it is empty, or short of its share} of the evaluation set."""
    counts = Counter(c.split for c in clips)
    short = {}
    for split, capacity in zip(splits, capacities):
        if counts[split] == 0 and capacity == 0:
            short[split] = f"no validation clip has a caption {'un' if split == 'novel' else ''}seen in training"
        elif counts[split] == 0 and sizes[split] == 0:
            shares = ", ".join(f"{k} {v}" for k, v in sizes.items())
            short[split] = f"eval_num_clips = {num_clips} leaves none for it ({shares})"
        elif counts[split] < sizes[split]:
            short[split] = f"{sizes[split] - counts[split]} of its {sizes[split]} validation clips did not decode"
    if not synth:
        short["paraphrase"] = "paraphrases need synthsign's synonym table (dataset synthsign)"
    return short
