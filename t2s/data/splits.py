"""The splits of a data set: training and validation (`build_datasets`: signer-disjoint, random, or a release's
official split), and the validation split's two parts, development and test, which share no caption and no signer
(`evaluation_parts`): the training's validation loss and the choice of a scale's settings read the development part,
`evaluate` and the report the test part. `caption_key` says when two captions are "the same" (synthsign: their gloss
sequence), `seen_order` in which order the training captions serve as seen evaluation captions.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from t2s.config import Config
from t2s.data.datasets import DEFAULT_CACHE_BYTES, RELEASE_READERS, ClipDataset, load_dataset
from t2s.data.records import DataError
from t2s.data.releases import official_split
from t2s.synthsign import glosses

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


def caption_key(caption: str, synthsign_glosses: bool) -> tuple[str, ...]:
    """What makes two captions 'the same' for the splits: the gloss sequence (synthsign) or the lower-cased words."""
    return tuple(glosses.gloss_sequence(caption) if synthsign_glosses else glosses.tokenize(caption))


def split_indices(
    signers: Sequence[str], mode: str, train_ratio: float, seed: int, source: str = "the dataset"
) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) of clips with the given signers; both non-empty.

    signer_disjoint: validation takes whole signers (chosen by `seed`) whose clip count is closest to
    (1 - train_ratio) of all clips, at least one signer; random: a `seed` permutation, at least one clip each side.
    """
    n = len(signers)
    rng = np.random.default_rng(seed)
    if n < 2:
        raise DataError(f"{source} has {n} usable clip(s); a train/validation split needs at least 2")
    target = (1.0 - train_ratio) * n
    if mode == "random":
        n_val = min(n - 1, max(1, int(round(target))))
        order = rng.permutation(n)
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
    if mode != "signer_disjoint":
        raise DataError(
            f"key 'split_mode' has value {mode!r}; allowed values: signer_disjoint, random (official: phoenix14t and "
            "how2sign only)"
        )
    counts = Counter(signers)
    names = sorted(counts)
    if len(names) < 2:
        raise DataError(
            f"split_mode 'signer_disjoint' needs at least 2 signers, but {source} has only one ({names[0]!r}); "
            "set split_mode: random to split its clips at random"
        )
    order = [names[i] for i in rng.permutation(len(names))]
    cumulative = np.cumsum([counts[name] for name in order])[:-1]  # val takes 1 .. len-1 signers
    k = int(np.argmin(np.abs(cumulative - target))) + 1
    val_signers = set(order[:k])
    train = [i for i, s in enumerate(signers) if s not in val_signers]
    val = [i for i, s in enumerate(signers) if s in val_signers]
    return train, val


def build_datasets(config: Config, cache_bytes: int = DEFAULT_CACHE_BYTES) -> tuple[ClipDataset, ClipDataset, dict]:
    """(train dataset, validation dataset, split_stats) for `config`.

    split_stats: {mode, dataset, source, train_clips, val_clips, train_signers, val_signers,
    skipped_files: [{path, reason}], num_skipped}, and held_out_clips with split_mode official.
    """
    full, skipped = load_dataset(config, cache_bytes)
    signers = [record.signer for record in full.records]
    if config.split_mode == "official" and config.dataset in RELEASE_READERS:
        train_idx, val_idx = official_split(full.records, full.source)
    else:
        train_idx, val_idx = split_indices(signers, config.split_mode, config.train_ratio, config.split_seed, full.source)
    train, val = full.subset(train_idx), full.subset(val_idx)
    stats = {
        "mode": config.split_mode,
        "dataset": config.dataset,
        "source": full.source,
        "train_clips": len(train),
        "val_clips": len(val),
        "train_signers": train.signers,
        "val_signers": val.signers,
        "skipped_files": skipped,
        "num_skipped": len(skipped),
    }
    if config.split_mode == "official":  # the release's test split (or any other): in neither side
        stats["held_out_clips"] = len(full) - len(train) - len(val)
    return train, val, stats


def seen_order(config: Config, train_keys: dict, synth: bool, rng: np.random.Generator) -> list[tuple]:
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
    for key in seen_order(config, train_keys, synth, np.random.default_rng(EVAL_CAPTION_SEED)):
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
