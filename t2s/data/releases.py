"""Two sign-language corpora read in their release layouts, as clip records (`t2s.data.load_dataset` uses them).

- `phoenix14t` (`read_phoenix14t(root)`): RWTH-PHOENIX-Weather 2014 T. Whichever of the corpus files
  `PHOENIX-2014-T.{train,dev,test}.corpus.csv` are present anywhere under `root` (the release keeps them in
  `annotations/manual/`) are read: pipe-separated, header `name|video|start|end|speaker|orth|translation`. A clip is
  the frame folder `features/fullFrame-210x260px/<split>/<video>` (the `video` column holds a pattern such as
  `<name>/1/*.png`; `<name>/1/*.png` if empty). caption = `translation`, signer = `speaker`, gloss = `orth`,
  split = the corpus file's split.
- `how2sign` (`read_how2sign(path)`): How2Sign. `path` is the release root (every `*.csv` under it whose header has
  SENTENCE_NAME is a sentence file) or one sentence file (clips are then looked for under its folder, else under the
  nearest of up to 6 folders above it that holds any of its clips). Sentence files
  are TAB-separated despite the `.csv` name, header
  `VIDEO_ID VIDEO_NAME SENTENCE_ID SENTENCE_NAME START_REALIGNED END_REALIGNED SENTENCE`. A clip is
  `<SENTENCE_NAME>.mp4` anywhere under the root; if it is absent but the raw video `<VIDEO_NAME>.mp4` is there, the
  clip is that video's START_REALIGNED..END_REALIGNED seconds. caption = SENTENCE; signer = a signer column if the
  file has one (signer, signer_id, speaker, participant), else VIDEO_ID: the sentence files carry no signer id, so
  the signer-disjoint split becomes video-disjoint (no source video on both sides). split = train / val / test from
  the file name where it says so. The release's older files with START/END (not realigned) are read when given as
  `data_dir` or when a root has no realigned file.

Rows whose clip is missing or unreadable, or whose caption is empty, are skipped and named (`t2s.data.records.skip`).
`official_split` gives the release's train / validation indices for `split_mode: official`.
Imports `t2s.data.records` and `t2s.data.video`.
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from t2s.data.records import ClipRecord, DataError, nothing_usable, skip
from t2s.data.video import UnusableFile, probe_video

PHOENIX_SPLITS = ("train", "dev", "test")
PHOENIX_COLUMNS = ("name", "video", "speaker", "orth", "translation")
PHOENIX_FRAMES = "fullFrame-210x260px"
HOW2SIGN_COLUMNS = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED", "SENTENCE")
OLD_TIMES = {"START_REALIGNED": "START", "END_REALIGNED": "END"}  # the times' names in the non-realigned files
HOW2SIGN_SIGNER_COLUMNS = ("signer", "signer_id", "speaker", "participant")
VALIDATION_SPLITS = ("dev", "val")
HOW2SIGN_PARENT_LEVELS = 6  # a sentence file given as data_dir: its clips are looked for this many folders up


def _read_table(path: Path, delimiter: str, required: Sequence[str], what: str) -> list[tuple[int, dict]]:
    """[(line number, row with stripped values)] of a delimited text file; DataError naming the file if it is not
    UTF-8 or lacks a required column."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_NONE)
    header = [name.strip() for name in reader.fieldnames or [] if name is not None]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{what} {path} lacks column(s) {', '.join(missing)}; expected a {delimiter!r}-separated header with "
            f"{', '.join(required)}; found: {header or 'no header'}"
        )
    rows = []
    try:
        for line, row in enumerate(reader, start=2):
            rows.append((line, {(k or "").strip(): " ".join(v.split()) for k, v in row.items() if isinstance(v, str)}))
    except csv.Error as exc:
        raise DataError(f"{what} {path} cannot be parsed at line {reader.line_num} ({exc})") from None
    return rows


def _root_folder(root: Path, dataset: str, expected: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data_dir '{root}' does not exist; dataset '{dataset}' expects {expected}")
    return root


# ================================================================================================ PHOENIX-2014-T
def _shallowest(paths: list[Path]) -> Optional[Path]:
    return min(paths, key=lambda p: (len(p.parts), str(p))) if paths else None


def phoenix_layout(root: Path) -> tuple[dict[str, Path], Path]:
    """({split: corpus file}, frames folder) of the PHOENIX-2014-T release under `root`: the shallowest corpus file of
    each split, and the `fullFrame-210x260px` folder of the release holding the train corpus file (else the
    shallowest one; `root/features/fullFrame-210x260px` if none). One walk that never descends into a `features`
    folder (about a million frame images)."""
    names = {f"PHOENIX-2014-T.{split}.corpus.csv": split for split in PHOENIX_SPLITS}
    corpora: dict[str, list[Path]] = {split: [] for split in PHOENIX_SPLITS}
    frames: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        if os.path.realpath(folder) in seen:  # a symlink loop
            subfolders[:] = []
            continue
        seen.add(os.path.realpath(folder))
        for name in files:
            if name in names:
                corpora[names[name]].append(Path(folder) / name)
        if PHOENIX_FRAMES in subfolders:
            frames.append(Path(folder) / PHOENIX_FRAMES)
        subfolders[:] = [] if Path(folder).name == "features" else sorted(d for d in subfolders if d != PHOENIX_FRAMES)
    found = {split: _shallowest(paths) for split, paths in corpora.items() if paths}
    anchor = next(iter(found.values()), None)
    beside = anchor.parents[2] / "features" / PHOENIX_FRAMES if anchor is not None and len(anchor.parents) > 2 else None
    frames_root = beside if beside in frames else _shallowest(frames)
    return found, frames_root or root / "features" / PHOENIX_FRAMES


def read_phoenix14t(root: Path) -> tuple[list[ClipRecord], list[dict]]:
    """Records of every usable clip of the PHOENIX-2014-T corpus files under `root`, and the skipped ones."""
    expected = "the PHOENIX-2014-T release root (annotations/manual/PHOENIX-2014-T.<split>.corpus.csv, features/)"
    root = _root_folder(root, "phoenix14t", expected)
    if not root.is_dir():
        raise DataError(f"data_dir '{root}' is not a folder; dataset 'phoenix14t' expects {expected}")
    corpora, frames_root = phoenix_layout(root)
    if not corpora:
        raise DataError(
            f"data_dir '{root}' holds no PHOENIX-2014-T corpus file (PHOENIX-2014-T.train/dev/test.corpus.csv, "
            f"searched in every subfolder); dataset 'phoenix14t' expects {expected}"
        )
    records, skipped, total = [], [], 0
    for split, corpus in corpora.items():
        for line, row in _read_table(corpus, "|", PHOENIX_COLUMNS, "PHOENIX-2014-T corpus file"):
            total += 1
            record = _phoenix_record(row, split, frames_root, f"{corpus}:{line}", skipped)
            if record is not None:
                records.append(record)
    if not records:
        raise nothing_usable(root, total, skipped)
    return records, skipped


def _phoenix_record(row: dict, split: str, frames_root: Path, where: str, skipped: list) -> Optional[ClipRecord]:
    name = row.get("name", "")
    if not name:
        skip(skipped, Path(where), "empty name")
        return None
    pattern = row.get("video") or f"{name}/1/*.png"
    if "\0" in pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts or "**" in pattern:
        skip(skipped, Path(where), f"video pattern {pattern!r} is not a path inside the frames folder")
        return None
    video = frames_root / split / pattern
    if not row.get("translation"):
        skip(skipped, video, f"empty translation (corpus row {where})")
        return None
    if not row.get("speaker"):
        skip(skipped, video, f"empty speaker (corpus row {where})")
        return None
    folder = video.parent if "*" in video.name or "?" in video.name else video
    if not folder.is_dir():
        skip(skipped, video, f"frame folder not found (corpus row {where})")
        return None
    try:
        probe_video(video)
    except UnusableFile as exc:
        skip(skipped, video, f"{exc} (corpus row {where})")
        return None
    return ClipRecord(f"{split}/{name}", video, row["translation"], row["speaker"], gloss=row.get("orth", ""),
                      split=split)


# ================================================================================================ How2Sign
def _how2sign_split(path: Path) -> str:
    words = re.split(r"[^a-z]+", path.stem.lower())
    for split in ("train", "val", "test"):
        if split in words or (split == "val" and "validation" in words) or (split == "val" and "dev" in words):
            return split
    return ""


def _header_columns(path: Path) -> list[str]:
    """The tab-separated column names of a file's first line ([] if it cannot be read)."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(65536).decode("utf-8-sig", errors="replace")
    except OSError:
        return []
    return [column.strip() for column in first.split("\t")]


def how2sign_sentence_files(path: Path) -> tuple[Path, list[Path]]:
    """(clip root, sentence files) for a How2Sign release root or one sentence file. Under a root, the realigned
    files (START_REALIGNED/END_REALIGNED) are used when there are any: the release's older START/END files hold the
    same sentences."""
    expected = "the How2Sign release root or one of its sentence files (how2sign_realigned_<split>.csv)"
    path = _root_folder(path, "how2sign", expected)
    if path.is_file():
        return path.parent, [path]
    files = sorted(p for p in path.rglob("*.csv") if p.is_file() and "SENTENCE_NAME" in _header_columns(p))
    if not files:
        raise DataError(
            f"data_dir '{path}' holds no How2Sign sentence file (a tab-separated .csv whose header has "
            f"{', '.join(HOW2SIGN_COLUMNS)}, searched in every subfolder); dataset 'how2sign' expects {expected}"
        )
    realigned = [p for p in files if "START_REALIGNED" in _header_columns(p)]
    return path, realigned or files


def _index_videos(root: Path) -> dict[str, Path]:
    """{file stem: path} of the mp4 files under `root` (the shallowest of a name wins)."""
    videos: dict[str, Path] = {}
    for video in sorted(root.rglob("*.mp4"), key=lambda p: (len(p.parts), str(p))):
        videos.setdefault(video.stem, video)
    return videos


def _clip_index(root: Path, given_file: bool, tables: list) -> dict[str, Path]:
    """The mp4 index to find the sentences' clips in: under `root`; for a sentence file given as data_dir, under the
    first of its folder and up to HOW2SIGN_PARENT_LEVELS folders above it that holds any sentence's clip or raw video
    (the release keeps the sentence files and the clips in sibling subfolders)."""
    names = {row.get(c, "") for _, _, rows in tables for _, row in rows for c in ("SENTENCE_NAME", "VIDEO_NAME")}
    above = [p for p in list(root.parents)[:HOW2SIGN_PARENT_LEVELS] if len(p.parts) > 2]  # never / or /home etc.
    candidates = [root, *above] if given_file else [root]
    for folder in candidates:
        videos = _index_videos(folder)
        if names & set(videos):
            return videos
    return {}


def read_how2sign(path: Path) -> tuple[list[ClipRecord], list[dict]]:
    """Records of every usable sentence clip of the How2Sign sentence files at `path`, and the skipped ones."""
    root, files = how2sign_sentence_files(Path(path))
    tables = []
    for sentences in files:
        columns = HOW2SIGN_COLUMNS
        if "START_REALIGNED" not in _header_columns(sentences) and "START" in _header_columns(sentences):
            columns = tuple(OLD_TIMES.get(c, c) for c in HOW2SIGN_COLUMNS)  # the release's older START/END files
        tables.append((sentences, _how2sign_split(sentences), _read_table(sentences, "\t", columns, "How2Sign sentence file")))
    videos = _clip_index(root, Path(path).is_file(), tables)
    records, skipped, total = [], [], 0
    probed: dict[Path, Optional[str]] = {}
    for sentences, split, rows in tables:
        for line, row in rows:
            total += 1
            record = _how2sign_record(row, split, videos, probed, f"{sentences}:{line}", skipped)
            if record is not None:
                records.append(record)
    if not records:
        raise nothing_usable(Path(path), total, skipped)
    return records, skipped


def _how2sign_clip(row: dict, videos: dict) -> tuple[Optional[Path], Optional[float], Optional[float], str]:
    """(video, start, end, reason if unusable) of a sentence row: its own clip, or its raw video cut by the times."""
    clip = videos.get(row.get("SENTENCE_NAME", ""))
    if clip is not None:
        return clip, None, None, ""
    raw = videos.get(row.get("VIDEO_NAME", ""))
    if raw is None:
        name = row.get("SENTENCE_NAME") or "?"
        return None, None, None, f"neither {name}.mp4 nor the raw video {row.get('VIDEO_NAME') or '?'}.mp4 found"
    times = [row.get(column, row.get(OLD_TIMES[column])) for column in ("START_REALIGNED", "END_REALIGNED")]
    try:
        start, end = float(times[0]), float(times[1])
    except (TypeError, ValueError):
        return raw, None, None, f"bad start/end times {times[0]!r}/{times[1]!r} s"
    if not (0 <= start < end < float("inf")):
        return raw, None, None, f"start {start} s is not before end {end} s (both finite, start >= 0)"
    return raw, start, end, ""


def _how2sign_record(row: dict, split: str, videos: dict, probed: dict, where: str, skipped: list) -> Optional[ClipRecord]:
    video, start, end, reason = _how2sign_clip(row, videos)
    if reason:
        skip(skipped, video or Path(where), f"{reason} (sentence row {where})")
        return None
    if not row.get("SENTENCE"):
        skip(skipped, video, f"empty SENTENCE (sentence row {where})")
        return None
    if video not in probed:
        try:
            probe_video(video)
            probed[video] = None
        except UnusableFile as exc:
            probed[video] = str(exc)
    if probed[video] is not None:
        skip(skipped, video, f"{probed[video]} (sentence row {where})")
        return None
    signer = next((row[c] for c in row if c.lower() in HOW2SIGN_SIGNER_COLUMNS and row[c]), row.get("VIDEO_ID", ""))
    name = row.get("SENTENCE_NAME") or f"{video.stem}@{start}-{end}"
    return ClipRecord(name, video, row["SENTENCE"], signer or video.stem, split=split, start=start, end=end)


# ================================================================================================ the official split
def official_split(records: Sequence[ClipRecord], source: str) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) by the release's own split: train -> training, dev/val -> validation;
    test clips are kept out of both (held out for a final evaluation)."""
    train = [i for i, r in enumerate(records) if r.split == "train"]
    val = [i for i, r in enumerate(records) if r.split in VALIDATION_SPLITS]
    present = sorted({r.split or "(none)" for r in records})
    for side, indices, wanted in (("training", train, "train"), ("validation", val, "dev or val")):
        if not indices:
            raise DataError(
                f"split_mode 'official' needs {side} clips (official split {wanted}), but {source} has usable clips "
                f"only in the split(s) {', '.join(present)}; add that split's file or use split_mode signer_disjoint "
                "or random"
            )
    return train, val
