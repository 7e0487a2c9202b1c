"""Datasets of `(clip, caption, signer)`: the video formats, the synthetic dataset, splits, frame sampling, the cache.

An item is `clip` float32 `(channels=3, frames, height, width)` in [-1, 1], `caption` str, `signer` str; the default
collate batches them into `(batch, 3, frames, height, width)`, a list of captions and a list of signers.

Sources (`config.dataset`):
- `folder`: `<id>.gif` + `<id>.txt` pairs in `config.data_dir` (other video extensions work too); the signer id is
  the file name up to the first `_` (the whole stem if it has none).
- `manifest`: a CSV/TSV (`config.manifest`) with video, caption and signer columns (see `COLUMN_ALIASES`); video
  paths are relative to the manifest's folder unless absolute. A video is a GIF, an MP4/WebM/AVI/MOV/MKV (decoded
  with PyAV), or a folder of png/jpg frames sorted by name (PHOENIX-2014T style; `folder/*.png` also works).
- `phoenix14t`, `how2sign`: the two corpora in their release layouts (`config.data_dir` = the release root), read
  by `t2s.data.releases`; with `split_mode: official` the release's own train / dev split is used (test held out).
- `synthsign` (default): clips rendered by `t2s.synthsign.signer`, generated once into a cache folder
  `<data_dir or <project>/.cache/synthsign>/<hash of the generation parameters>/` and then read like `folder`.

Frame sampling, decoding and GIF writing are `t2s.data.video`'s (`load_clip`: `num_frames` frames uniformly over the
source's timeline, LOOPED if it is shorter, centre-cropped and resized to `image_size`). Sampled, resized clips are
kept in an in-memory LRU (`ClipCache`: uint8, bounded by bytes) so later epochs do not decode again; with DataLoader
workers each worker holds its own cache.

Bad input: a missing folder or manifest, a manifest without a needed column, or nothing usable is a `DataError`
naming the file. A clip without a caption file, with an empty or non-UTF-8 caption, or whose video cannot be
opened is skipped with a `DataWarning` and listed in `split_stats["skipped_files"]`. A video that passes the cheap
header check but fails to decode in `__getitem__` is replaced by the next decodable clip, with a warning, and
recorded in `dataset.decode_failures`, so one bad file never stops a training run.

This room: records (`scan_folder`, `read_manifest`), `ClipCache`, `ClipDataset`, the sources (`load_dataset`,
`load_synthsign` reading the synthsign cache). The splits are `t2s.data.splits`'. It imports `t2s.config`,
`t2s.data.records`, `t2s.data.releases` (the release layouts), `t2s.data.video` and `t2s.synthsign.dataset`
(generating the synthsign cache).
"""
from __future__ import annotations

import csv
import io
import json
import operator
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from t2s.config import Config
from t2s.data.records import ClipRecord, DataError, DataWarning, nothing_usable, skip
from t2s.data.releases import read_how2sign, read_phoenix14t
from t2s.data.video import VIDEO_EXTENSIONS, UnusableFile, frame_folder, load_clip, probe_video, to_clip
from t2s.synthsign.dataset import generate_synthsign, synthsign_dir, synthsign_params

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "video": ("video", "video_path", "path", "file"),
    "caption": ("caption", "text", "sentence", "translation"),
    "signer": ("signer", "signer_id", "speaker"),
}
RELEASE_READERS = {"phoenix14t": read_phoenix14t, "how2sign": read_how2sign}  # dataset -> data_dir reader
DEFAULT_CACHE_BYTES = 2 << 30  # 2 GiB of decoded clips per dataset


def signer_from_filename(stem: str) -> str:
    """The signer id of a folder-source clip: its file name up to the first '_' (the whole stem if none)."""
    return stem.split("_", 1)[0] or stem


def read_caption(path: Path) -> str:
    """A caption file as one line of text (whitespace collapsed); raises UnusableFile if empty or not UTF-8."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnusableFile(f"caption file {path.name} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    caption = " ".join(text.split())
    if not caption:
        raise UnusableFile(f"caption file {path.name} is empty")
    return caption


def scan_folder(root: Path) -> tuple[list[ClipRecord], list[dict]]:
    """Records for the `<id>.<video ext>` + `<id>.txt` pairs in `root`, and the skipped files [{path, reason}]."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data_dir '{root}' does not exist; it should be a folder of <id>.gif + <id>.txt pairs")
    if not root.is_dir():
        raise DataError(f"data_dir '{root}' is not a folder; it should be a folder of <id>.gif + <id>.txt pairs")
    videos = sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise DataError(
            f"data_dir '{root}' holds no videos ({', '.join(VIDEO_EXTENSIONS)}); expected <id>.gif + <id>.txt "
            f"pairs; found: {found or 'nothing'}"
        )
    records, skipped = [], []
    for video in videos:
        caption_file = video.with_suffix(".txt")
        if not caption_file.is_file():
            skip(skipped, video, f"missing caption file {caption_file.name}")
            continue
        try:
            caption = read_caption(caption_file)
            probe_video(video)
        except UnusableFile as exc:
            skip(skipped, video, str(exc))
            continue
        records.append(ClipRecord(video.stem, video, caption, signer_from_filename(video.stem)))
    if not records:
        raise nothing_usable(root, len(videos), skipped)
    return records, skipped


def _sniff_delimiter(path: Path, text: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    try:
        return csv.Sniffer().sniff(text[:4096], delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _match_columns(header: Sequence[str], path: Path) -> dict[str, str]:
    """{role: column name in the file} for video, caption, signer (case-insensitive alias match)."""
    by_lower = {name.strip().lower(): name for name in header if name is not None}
    columns, missing = {}, []
    for role, aliases in COLUMN_ALIASES.items():
        match = next((by_lower[a] for a in aliases if a in by_lower), None)
        if match is None:
            missing.append(f"{role} (one of: {', '.join(aliases)})")
        else:
            columns[role] = match
    if missing:
        raise DataError(
            f"manifest {path} lacks column(s) {'; '.join(missing)}; columns found: {list(header)} "
            "(names are matched case-insensitively)"
        )
    return columns


def read_manifest(path: Path) -> tuple[list[ClipRecord], list[dict]]:
    """Records from a CSV/TSV manifest (video, caption, signer columns) and the skipped rows [{path, reason}]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest '{path}' does not exist; it should be a CSV/TSV with video, caption and signer columns")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text), delimiter=_sniff_delimiter(path, text))
    if not reader.fieldnames:
        raise DataError(f"manifest {path} is empty; expected a header row with video, caption and signer columns")
    columns = _match_columns(reader.fieldnames, path)
    records, skipped, rows = [], [], 0
    for line, row in enumerate(reader, start=2):
        rows += 1
        value = {role: " ".join((row.get(column) or "").split()) for role, column in columns.items()}
        where = f"{path}:{line}"
        if not value["video"]:
            skip(skipped, Path(where), "empty video path")
            continue
        video = Path(value["video"])
        video = video if video.is_absolute() else path.parent / video
        folder = frame_folder(video)
        if not (video.exists() or (folder is not None and folder[0].is_dir())):
            skip(skipped, video, f"video not found (manifest row {where})")
            continue
        if not value["caption"]:
            skip(skipped, video, f"empty caption (manifest row {where})")
            continue
        if not value["signer"]:
            skip(skipped, video, f"empty signer (manifest row {where})")
            continue
        try:
            probe_video(video)
        except UnusableFile as exc:
            skip(skipped, video, f"{exc} (manifest row {where})")
            continue
        records.append(ClipRecord(f"{line}:{video.name}", video, value["caption"], value["signer"]))
    if not records:
        raise nothing_usable(path, rows, skipped)
    return records, skipped


# ================================================================================================ dataset
class ClipCache:
    """An LRU of decoded clips (read-only uint8 arrays) bounded by their total bytes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any) -> Optional[np.ndarray]:
        array = self._items.get(key)
        if array is not None:
            self._items.move_to_end(key)
        return array

    def put(self, key: Any, array: np.ndarray) -> None:
        if array.nbytes > self.max_bytes or key in self._items:
            return
        array.setflags(write=False)
        self._items[key] = array
        self.nbytes += array.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= evicted.nbytes


class ClipDataset(Dataset):
    """`(clip float32 (3, F, H, W) in [-1, 1], caption, signer)` items from clip records.

    `item_info(i)` gives (caption, signer) without decoding; `frames(i)` the uint8 (F, H, W, 3) clip;
    `keypoints(i)` the ground-truth hand centres float32 (F, 2, 2) (synthsign only; None otherwise).
    A clip that fails to decode is replaced by the next decodable one (warning + `decode_failures`).
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        num_frames: int,
        image_size: int,
        keypoints: Optional[dict[str, np.ndarray]] = None,
        cache: Optional[ClipCache] = None,
        source: str = "",
    ):
        self.records = list(records)
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.source = source
        self.cache = cache if cache is not None else ClipCache()
        self._keypoints = keypoints
        self.decode_failures: list[dict] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def signers(self) -> list[str]:
        return sorted({r.signer for r in self.records})

    @property
    def has_keypoints(self) -> bool:
        return self._keypoints is not None

    def item_info(self, index: int) -> tuple[str, str]:
        record = self.records[index]
        return record.caption, record.signer

    def keypoints(self, index: int) -> Optional[np.ndarray]:
        """Ground-truth hand centres float32 (F, 2, 2) ([f, 0] left, [f, 1] right, (x, y) pixels), or None."""
        if self._keypoints is None:
            return None
        return self._keypoints[self.records[index].id]

    def frames(self, index: int) -> np.ndarray:
        """The clip as uint8 (F, H, W, 3) (read-only: shared with the cache), from the cache or decoded; raises if
        the video cannot be decoded."""
        record = self.records[index]
        key = (str(record.video), record.start, record.end, self.num_frames, self.image_size)
        frames = self.cache.get(key)
        if frames is None:
            frames = load_clip(record.video, self.num_frames, self.image_size, record.start, record.end)
            self.cache.put(key, frames)
        return frames

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        index = operator.index(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} clips")
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                frames = self.frames(j)
            except Exception as exc:  # any decoder failure: skip this clip rather than stop training
                self._record_failure(j, exc)
                continue
            record = self.records[j]
            return to_clip(frames), record.caption, record.signer
        raise DataError(f"none of the {n} clips of {self.source or 'this dataset'} could be decoded: {self.decode_failures[:3]}")

    def _record_failure(self, index: int, exc: Exception) -> None:
        self._bad.add(index)
        path = str(self.records[index].video)
        reason = f"{type(exc).__name__}: {exc}"
        self.decode_failures.append({"path": path, "reason": reason})
        warnings.warn(f"cannot decode {path} ({reason}); using the next clip instead", DataWarning, stacklevel=3)

    def subset(self, indices: Sequence[int]) -> "ClipDataset":
        """A dataset of the given clips, sharing this one's cache and keypoints."""
        return ClipDataset(
            [self.records[i] for i in indices], self.num_frames, self.image_size, self._keypoints, self.cache, self.source
        )


# ================================================================================================ the synthsign cache
def _check_synthsign_cache(folder: Path, params: dict) -> None:
    """Raise a DataError (and leave the folder alone) if an existing cache folder is not a complete cache of `params`."""
    hint = f"delete the folder {folder} to regenerate it"
    manifest = folder / "manifest.json"
    try:
        stored = json.loads(manifest.read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"synthsign cache {folder} is incomplete or corrupt ({manifest.name}: {exc}); {hint}") from None
    if stored != params:
        raise DataError(f"synthsign cache {folder} was generated with {stored}, not {params}; {hint}")
    if not (folder / "keypoints.npz").is_file():
        raise DataError(f"synthsign cache {folder} lacks keypoints.npz; {hint}")


def _load_keypoints(path: Path, num_frames: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, keypoints = data["ids"], data["keypoints"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read keypoints ({exc}); delete its folder to regenerate it") from None
    if keypoints.shape[1:] != (num_frames, 2, 2) or len(ids) != len(keypoints):
        raise DataError(f"{path}: keypoints of shape {keypoints.shape}, expected (N, {num_frames}, 2, 2)")
    return {str(i): k for i, k in zip(ids, keypoints)}


def load_synthsign(config: Config, cache: Optional[ClipCache] = None) -> tuple[ClipDataset, list[dict]]:
    """The synthsign dataset of `config`, generated into its cache folder on first use, read as a `folder` source."""
    params = synthsign_params(config)
    folder = synthsign_dir(config)
    if folder.exists():
        _check_synthsign_cache(folder, params)
    else:
        generate_synthsign(folder, params)
    records, skipped = scan_folder(folder)
    keypoints = _load_keypoints(folder / "keypoints.npz", config.num_frames)
    missing = [r.id for r in records if r.id not in keypoints]
    if missing:
        raise DataError(f"synthsign cache {folder}: no keypoints for {missing[:3]}; delete the folder to regenerate it")
    dataset = ClipDataset(records, config.num_frames, config.image_size, keypoints, cache, source=str(folder))
    return dataset, skipped

# ================================================================================================ splits
def load_dataset(config: Config, cache_bytes: int = DEFAULT_CACHE_BYTES) -> tuple[ClipDataset, list[dict]]:
    """Every usable clip of the configured source, and the skipped files [{path, reason}]."""
    cache = ClipCache(cache_bytes)
    if config.dataset == "synthsign":
        return load_synthsign(config, cache)
    if config.dataset == "folder":
        if not config.data_dir:
            raise DataError("dataset 'folder' needs key 'data_dir' (a folder of <id>.gif + <id>.txt pairs)")
        root = Path(config.data_dir)
        records, skipped = scan_folder(root)
        return ClipDataset(records, config.num_frames, config.image_size, cache=cache, source=str(root)), skipped
    if config.dataset == "manifest":
        if not config.manifest:
            raise DataError("dataset 'manifest' needs key 'manifest' (a CSV/TSV with video, caption and signer columns)")
        path = Path(config.manifest)
        if not path.is_absolute() and not path.exists() and config.data_dir:
            path = Path(config.data_dir) / path
        records, skipped = read_manifest(path)
        return ClipDataset(records, config.num_frames, config.image_size, cache=cache, source=str(path)), skipped
    if config.dataset in RELEASE_READERS:
        if not config.data_dir:
            raise DataError(f"dataset '{config.dataset}' needs key 'data_dir' (the release root)")
        records, skipped = RELEASE_READERS[config.dataset](Path(config.data_dir))
        source = str(config.data_dir)
        return ClipDataset(records, config.num_frames, config.image_size, cache=cache, source=source), skipped
    raise DataError(
        f"key 'dataset' has value {config.dataset!r}; allowed values: synthsign, folder, manifest, phoenix14t, how2sign"
    )
