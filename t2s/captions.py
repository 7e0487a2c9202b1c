"""The evaluation set: held-out captions in three caption splits (seen, novel, paraphrase) with their real clips, in
two parts that share no caption and no signer: the development part (for choosing a scale's settings, and the
training's validation loss) and the test part (what `evaluate` scores and the report shows).

`evaluation_parts(config, train, val)` divides the held-out signers and the captions between the parts (see its
docstring); `part_indices` gives a part's validation clips; `evaluation_clips(config, train, val, num_clips, part)`
picks a part's clips (see its docstring); `split_sizes` divides a clip budget among the splits; `caption_key` says
when two captions are "the same" (synthsign: the gloss sequence).

Public: `evaluation_clips`, `EvaluationClip`, `split_sizes`, `caption_key`, `CAPTION_SPLITS`, `EVAL_CAPTION_SEED`
(re-exported by `t2s.data`, their old home). Imports `t2s.config`, `t2s.glosses` and `t2s.synthsign`; the datasets
it reads are `t2s.data.ClipDataset`s (named for type checkers only: `t2s.data` re-exports this module).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from . import glosses, synthsign
from .config import Config

if TYPE_CHECKING:  # data imports this module (to re-export it): the dataset type is for annotations only
    from .data import ClipDataset

CAPTION_SPLITS = ("seen", "novel", "paraphrase")
EVAL_CAPTION_SEED = 0  # which seen captions, their signers and render seeds, and the paraphrases' words: fixed
PARTS = ("dev", "test")  # the development part (choosing settings) and the test part (what is scored and reported)
EVAL_PART_SEED = 0  # which held-out signers form each part: fixed


@dataclass(frozen=True)
class EvaluationParts:
    """Which part each held-out signer and each caption belongs to (`evaluation_parts`)."""

    signers: dict  # validation signer -> "dev" | "test"
    captions: dict  # caption key -> "dev" | "test" (every validation caption and every training caption)
    signer_disjoint: bool  # False only when the validation split holds a single signer (both parts then share it)

    def part_signers(self, part: str) -> list[str]:
        return sorted(s for s, p in self.signers.items() if p == part or not self.signer_disjoint)

    def clip_in(self, part: str, signer: str, key: tuple) -> bool:
        """Whether a validation clip by `signer` of caption `key` belongs to `part`: its signer's part and its
        caption's part must both be it (a clip whose signer and caption fall in different parts is in neither)."""
        return self.captions.get(key) == part and (self.signers.get(signer) == part or not self.signer_disjoint)

    def describe(self, part: str) -> str:
        """'signers s1, s2' of a part, and whether the parts are signer-disjoint."""
        shared = "" if self.signer_disjoint else " (the only held-out signer: the parts share it, not their captions)"
        return f"signer{'s' if len(self.part_signers(part)) > 1 else ''} {', '.join(self.part_signers(part))}{shared}"


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


def caption_key(caption: str, synthsign_glosses: bool) -> tuple[str, ...]:
    """What makes two captions 'the same' for the splits: the gloss sequence (synthsign) or the lower-cased words."""
    return tuple(glosses.gloss_sequence(caption) if synthsign_glosses else glosses.tokenize(caption))


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


def _seen_order(config: Config, train_keys: dict, synth: bool, rng: np.random.Generator) -> list[tuple]:
    """The training captions in the order seen clips are taken: the sample prompts' first, then an `rng` order
    (synthsign; other data take their seen clips from the validation split, in its order)."""
    if not synth:
        return list(train_keys)
    prompts = [k for k in dict.fromkeys(caption_key(p, True) for p in config.sample_prompts) if k in train_keys]
    rest = sorted(set(train_keys) - set(prompts))
    return prompts + [rest[i] for i in rng.permutation(len(rest))]


def evaluation_parts(config: Config, train: ClipDataset, val: ClipDataset) -> EvaluationParts:
    """The development and test parts, disjoint in signers and in captions (deterministic).

    * Signers: the validation split's signers in an `EVAL_PART_SEED` order; the test part takes the first half
      (rounded up), the development part the rest. A validation split with one signer cannot be divided: both parts
      have it (`signer_disjoint` False, said in every row and in the report) and stay apart in their captions.
    * Captions (`caption_key`): a validation clip's caption goes to its signer's part, the test signers' clips first
      (a caption both parts' signers sign is the test part's, and the development signer's clip of it is in neither
      part); with one signer, the validation captions alternate, test first. The training captions not signed in the
      validation split (seen captions, which synthsign renders for a part's signers) go in their seen order: the
      sample prompts to the test part (the captions the report's samples show), the rest alternating, development
      first.
    """
    synth = train.has_keypoints and config.dataset == "synthsign"
    names = sorted(set(val.signers))
    order = [names[i] for i in np.random.default_rng(EVAL_PART_SEED).permutation(len(names))]
    disjoint = len(order) > 1
    signers = {s: ("test" if i < (len(order) + 1) // 2 else "dev") for i, s in enumerate(order)}
    captions: dict = {}
    records = sorted(val.records, key=lambda r: signers[r.signer] != "test")  # stable: the test signers' clips first
    for record in records:
        key = caption_key(record.caption, synth)
        if key not in captions:
            captions[key] = signers[record.signer] if disjoint else PARTS[(len(captions) + 1) % 2]
    train_keys = dict.fromkeys(caption_key(r.caption, synth) for r in train.records)
    prompts = {caption_key(p, synth) for p in config.sample_prompts}
    alternate = 0
    for key in _seen_order(config, train_keys, synth, np.random.default_rng(EVAL_CAPTION_SEED)):
        if key in captions:
            continue
        if key in prompts:
            captions[key] = "test"
        else:
            captions[key], alternate = PARTS[alternate % 2], alternate + 1
    return EvaluationParts(signers, captions, disjoint)


def part_indices(config: Config, train: ClipDataset, val: ClipDataset, part: str) -> list[int]:
    """The indices of the validation clips in `part` ("dev" or "test"), in split order."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    parts = evaluation_parts(config, train, val)
    synth = train.has_keypoints and config.dataset == "synthsign"
    return [i for i, r in enumerate(val.records) if parts.clip_in(part, r.signer, caption_key(r.caption, synth))]


def development_set(config: Config, train: ClipDataset, val: ClipDataset) -> tuple[ClipDataset, dict]:
    """(the validation clips the training's held-out loss reads, the parts' record for metadata.json's split: each
    part's signers and validation clips, whether the parts are signer-disjoint, and `validation_part`). They are the
    development part's; a split too small to give that part a clip (a handful of held-out clips) falls back to the
    whole validation split, with a warning and `validation_part` "all" in the record: its curve then reads the test
    part's clips too, so it must not be used to choose settings."""
    parts = evaluation_parts(config, train, val)
    indices = {part: part_indices(config, train, val, part) for part in PARTS}
    record = {"parts_signer_disjoint": parts.signer_disjoint,
              **{f"{part}_signers": parts.part_signers(part) for part in PARTS},
              **{f"{part}_clips": len(indices[part]) for part in PARTS}, "validation_part": "dev"}
    if not indices["dev"]:
        warnings.warn(
            f"the development part of the validation split holds no clip ({len(val)} validation clips, signers "
            f"{', '.join(val.signers)}): the validation loss reads every validation clip, the test part's included, "
            f"so do not choose settings on it. Hold out more signers or clips (a lower train_ratio, or more data) "
            f"for a development part")
        return val, {**record, "validation_part": "all"}
    return val.subset(indices["dev"]), record


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
        seen_keys = [k for k in _seen_order(config, train_keys, synth, rng) if parts.captions.get(k) == part]
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
