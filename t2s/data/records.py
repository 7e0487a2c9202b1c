"""Clip records and the data errors shared by the data sources (`t2s.data.datasets`' own sources and `t2s.data.releases`'
release layouts): `ClipRecord`, `DataError`, `DataWarning`, and the skip bookkeeping (`skip`, `nothing_usable`).

Imports nothing of the kit.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


class DataError(ValueError):
    """Unusable data: the message names the file, folder or key, and what would be valid."""


class DataWarning(UserWarning):
    """A file was skipped or replaced; the message names it and says why."""


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a dataset, before decoding.

    `gloss`: the gloss string where the release has one (PHOENIX-2014-T's `orth`), kept for evaluation; `split`: the
    release's official split (train, dev, test) where it has one; `start`/`end`: seconds into `video` when the clip
    is cut from a longer video (How2Sign's raw videos), else None (the whole video).
    """

    id: str
    video: Path
    caption: str
    signer: str
    gloss: str = ""
    split: str = ""
    start: Optional[float] = None
    end: Optional[float] = None


def skip(skipped: list[dict], path: Path, reason: str) -> None:
    """Record a skipped file in `skipped` and warn, naming it and the reason."""
    skipped.append({"path": str(path), "reason": reason})
    warnings.warn(f"skipping {path}: {reason}", DataWarning, stacklevel=3)


def nothing_usable(where: Path, total: int, skipped: list[dict]) -> DataError:
    """The error for a source whose every candidate clip was skipped: the count, the reasons, the first file."""
    kinds = (" ".join(re.sub(r"\(.*\)|\S+\.txt", " ", s["reason"]).split()) for s in skipped)
    reasons = Counter(kinds)
    summary = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
    first = f" First: {skipped[0]['path']}: {skipped[0]['reason']}." if skipped else ""
    return DataError(f"no usable clips in {where}: all {total} candidate videos were skipped ({summary}).{first}")
