"""Datasets of `(clip, caption, signer)`: the video formats, the synthetic dataset, splits, frame sampling, the cache.

An item is `clip` float32 `(channels=3, frames, height, width)` in [-1, 1], `caption` str, `signer` str; the default
collate batches them into `(batch, 3, frames, height, width)`, a list of captions and a list of signers.

Sources (`config.dataset`):
- `folder`: `<id>.gif` + `<id>.txt` pairs in `config.data_dir` (other video extensions work too); the signer id is
  the file name up to the first `_` (the whole stem if it has none).
- `manifest`: a CSV/TSV (`config.manifest`) with video, caption and signer columns (see `COLUMN_ALIASES`); video
  paths are relative to the manifest's folder unless absolute. A video is a GIF, an MP4/WebM/AVI/MOV/MKV (decoded
  with PyAV), or a folder of png/jpg frames sorted by name (PHOENIX-2014T style; `folder/*.png` also works).
- `synthsign` (default): clips rendered by `t2s.synthsign`, generated once into a cache folder
  `<data_dir or <project>/.cache/synthsign>/<hash of the generation parameters>/` and then read like `folder`.

Frame sampling: `num_frames` frames uniformly over the source's timeline (np.linspace, rounded). A clip with fewer
frames than `num_frames` is LOOPED (frame i is source frame i mod n). A GIF's timeline honours frame durations:
GIF writers (Pillow among them) merge identical consecutive frames into one longer frame, so a frame shown k times
as long as the shortest counts k times. Frames are centre-cropped to a square (if not square) and resized to
`image_size` with PIL bilinear (which averages over the source footprint when shrinking); frames already at
`image_size` are used untouched. Sampled, resized clips are kept in an in-memory LRU (uint8, bounded by bytes) so
later epochs do not decode again; with DataLoader workers each worker holds its own cache.

Bad input: a missing folder or manifest, a manifest without a needed column, or nothing usable is a `DataError`
naming the file. A clip without a caption file, with an empty or non-UTF-8 caption, or whose video cannot be
opened is skipped with a `DataWarning` and listed in `split_stats["skipped_files"]`. A video that passes the cheap
header check but fails to decode in `__getitem__` is replaced by the next decodable clip, with a warning, and
recorded in `dataset.decode_failures`, so one bad file never stops a training run.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import operator
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import av
import numpy as np
import torch
from PIL import Image, ImageSequence
from torch.utils.data import Dataset

from t2s import synthsign
from t2s.config import PROJECT_ROOT, Config
from t2s.rundir import atomic_write_bytes

VIDEO_EXTENSIONS = (".gif", ".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")
PIL_VIDEO_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "video": ("video", "video_path", "path", "file"),
    "caption": ("caption", "text", "sentence", "translation"),
    "signer": ("signer", "signer_id", "speaker"),
}
DEFAULT_CACHE_BYTES = 2 << 30  # 2 GiB of decoded clips per dataset
SYNTHSIGN_SEED = 0  # the generation seed: the synthetic data stays fixed across training seeds and split seeds
SYNTHSIGN_VERSION = 2  # bump when the renderer changes, so old caches are not reused (2: synonyms and filler words)
SYNTHSIGN_CACHE_ROOT = PROJECT_ROOT / ".cache" / "synthsign"
GIF_FRAME_MS = 100
PARALLEL_MIN_CLIPS = 600  # below this, forking workers costs more than it saves


class DataError(ValueError):
    """Unusable data: the message names the file, folder or key, and what would be valid."""


class DataWarning(UserWarning):
    """A file was skipped or replaced; the message names it and says why."""


class UnusableFile(Exception):
    """Internal: one file cannot be used; `str(exc)` is the reason."""


# ================================================================================================ frames
def sample_frame_indices(num_source: int, num_frames: int) -> np.ndarray:
    """Indices (num_frames,) into a timeline of `num_source` frames: uniform (np.linspace, rounded) when the source
    is long enough, else the source LOOPED (index i -> i mod num_source)."""
    if num_source < 1:
        raise ValueError("a clip needs at least one frame")
    if num_source < num_frames:
        return np.arange(num_frames) % num_source
    return np.round(np.linspace(0, num_source - 1, num_frames)).astype(np.int64)


def square_resize(frame: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (image_size, image_size, 3): centre-crop to a square, then PIL bilinear resize."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frame = frame[top : top + side, left : left + side]
    if side == image_size:
        return frame
    return np.asarray(Image.fromarray(frame).resize((image_size, image_size), Image.Resampling.BILINEAR))


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 tensor (3, F, H, W) in [-1, 1] (converted in numpy: fast on CPU)."""
    clip = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)  # (3, F, H, W)
    clip /= 127.5
    clip -= 1.0
    return torch.from_numpy(clip)


def to_frames(clip: torch.Tensor) -> np.ndarray:
    """float (3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3) (values outside [-1, 1] are clamped)."""
    values = clip.detach().float().cpu().numpy().transpose(1, 2, 3, 0)  # (F, H, W, 3)
    return np.round((np.clip(values, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def write_gif(path: Path, frames: np.ndarray, duration_ms: int = GIF_FRAME_MS) -> None:
    """Write uint8 (F, H, W, 3) as a looping GIF, atomically (the kit's one GIF writer). Colours are exact when a clip has at most 256 of them (a palette
    of the clip's own colours); otherwise PIL's adaptive palette quantizes. Identical consecutive frames are merged
    by Pillow into longer frames, which `read_video` expands again."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    packed = (frames[..., 0].astype(np.uint32) << 16) | (frames[..., 1].astype(np.uint32) << 8) | frames[..., 2]
    colours = np.unique(packed)
    if len(colours) <= 256:
        index = np.searchsorted(colours, packed)
        palette = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.uint8)
        images = []
        for f in range(len(frames)):
            image = Image.fromarray(index[f].astype(np.uint8))  # mode L; putpalette makes it P
            image.putpalette(palette.tobytes())
            images.append(image)
    else:
        images = [Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0,
                   optimize=False)
    atomic_write_bytes(Path(path), buffer.getvalue())  # a reader never sees half a GIF


# ================================================================================================ decoding
def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _frame_folder(path: Path) -> Optional[tuple[Path, str]]:
    """(folder, glob pattern) when `path` is a frame folder or `folder/*.png`-style pattern; else None."""
    if ("*" in path.name or "?" in path.name) and not path.exists():
        return path.parent, path.name
    if path.is_dir():
        return path, "*"
    return None


def list_frame_images(folder: Path, pattern: str = "*") -> list[Path]:
    """The png/jpg frames of a frame folder, in natural name order (frame2 before frame10)."""
    images = [p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(images, key=_natural_key)


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _read_gif(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """(distinct frames uint8 (H, W, 3), timeline: index into them for each displayed time step)."""
    frames, durations = [], []
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(frame.info.get("duration"))
    if not frames:
        raise UnusableFile("no frames")
    repeats = np.ones(len(frames), dtype=np.int64)
    if all(isinstance(d, (int, float)) and d > 0 for d in durations):
        d = np.asarray(durations, dtype=np.float64)
        repeats = np.maximum(1, np.round(d / d.min())).astype(np.int64)
    return frames, np.repeat(np.arange(len(frames)), repeats)


def _read_av(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UnusableFile("no video stream")
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise UnusableFile("zero frames")
    return frames


def _read_sampled(path: Path, num_frames: int) -> list[np.ndarray]:
    """`num_frames` frames (uint8 (H, W, 3) each) sampled uniformly (or looped) from the video at `path`."""
    folder = _frame_folder(path)
    if folder is not None:
        images = list_frame_images(*folder)
        if not images:
            raise UnusableFile("no frame images (png/jpg)")
        return [_read_image(images[i]) for i in sample_frame_indices(len(images), num_frames)]
    if path.suffix.lower() in PIL_VIDEO_EXTENSIONS:
        distinct, timeline = _read_gif(path)
        return [distinct[timeline[i]] for i in sample_frame_indices(len(timeline), num_frames)]
    frames = _read_av(path)
    return [frames[i] for i in sample_frame_indices(len(frames), num_frames)]


def read_video(path: Path | str) -> np.ndarray:
    """Every displayed frame of a video (GIF timeline expanded by durations): uint8 (T, H, W, 3)."""
    path = Path(path)
    folder = _frame_folder(path)
    if folder is not None:
        frames = [_read_image(p) for p in list_frame_images(*folder)]
    elif path.suffix.lower() in PIL_VIDEO_EXTENSIONS:
        distinct, timeline = _read_gif(path)
        frames = [distinct[i] for i in timeline]
    else:
        frames = _read_av(path)
    if not frames:
        raise UnusableFile("no frames")
    return np.stack(frames)


def load_clip(path: Path | str, num_frames: int, image_size: int) -> np.ndarray:
    """A video as uint8 (num_frames, image_size, image_size, 3): sampled (looped if short), cropped, resized.
    Any decoder failure comes out as UnusableFile(reason)."""
    try:
        frames = _read_sampled(Path(path), num_frames)
        if not frames:
            raise UnusableFile("no frames")
        return np.stack([square_resize(frame, image_size) for frame in frames])
    except UnusableFile:
        raise
    except Exception as exc:  # decoders raise many types (OSError, av.error.*, PIL's UnidentifiedImageError, ...)
        raise UnusableFile(f"cannot decode video ({type(exc).__name__}: {exc})") from None


def probe_video(path: Path) -> None:
    """Cheap check that a video opens and its first frame decodes; raises UnusableFile(reason) if not."""
    try:
        folder = _frame_folder(path)
        if folder is not None:
            images = list_frame_images(*folder)
            if not images:
                raise UnusableFile("no frame images (png/jpg) in the folder")
            _read_image(images[0])
        elif path.suffix.lower() in PIL_VIDEO_EXTENSIONS:
            with Image.open(path) as image:
                image.load()
        else:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise UnusableFile("no video stream")
                if next(container.decode(container.streams.video[0]), None) is None:
                    raise UnusableFile("zero frames")
    except UnusableFile:
        raise
    except Exception as exc:  # decoders raise many types (OSError, av.error.*, SyntaxError from PIL ...)
        raise UnusableFile(f"cannot decode video ({type(exc).__name__}: {exc})") from None


# ================================================================================================ records
@dataclass(frozen=True)
class ClipRecord:
    """One clip of a dataset, before decoding."""

    id: str
    video: Path
    caption: str
    signer: str


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


def _skip(skipped: list[dict], path: Path, reason: str) -> None:
    skipped.append({"path": str(path), "reason": reason})
    warnings.warn(f"skipping {path}: {reason}", DataWarning, stacklevel=3)


def _nothing_usable(where: Path, total: int, skipped: list[dict]) -> DataError:
    kinds = (" ".join(re.sub(r"\(.*\)|\S+\.txt", " ", s["reason"]).split()) for s in skipped)
    reasons = Counter(kinds)
    summary = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
    first = f" First: {skipped[0]['path']}: {skipped[0]['reason']}." if skipped else ""
    return DataError(f"no usable clips in {where}: all {total} candidate videos were skipped ({summary}).{first}")


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
            _skip(skipped, video, f"missing caption file {caption_file.name}")
            continue
        try:
            caption = read_caption(caption_file)
            probe_video(video)
        except UnusableFile as exc:
            _skip(skipped, video, str(exc))
            continue
        records.append(ClipRecord(video.stem, video, caption, signer_from_filename(video.stem)))
    if not records:
        raise _nothing_usable(root, len(videos), skipped)
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
            _skip(skipped, Path(where), "empty video path")
            continue
        video = Path(value["video"])
        video = video if video.is_absolute() else path.parent / video
        folder = _frame_folder(video)
        if not (video.exists() or (folder is not None and folder[0].is_dir())):
            _skip(skipped, video, f"video not found (manifest row {where})")
            continue
        if not value["caption"]:
            _skip(skipped, video, f"empty caption (manifest row {where})")
            continue
        if not value["signer"]:
            _skip(skipped, video, f"empty signer (manifest row {where})")
            continue
        try:
            probe_video(video)
        except UnusableFile as exc:
            _skip(skipped, video, f"{exc} (manifest row {where})")
            continue
        records.append(ClipRecord(f"{line}:{video.name}", video, value["caption"], value["signer"]))
    if not records:
        raise _nothing_usable(path, rows, skipped)
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
        key = (str(record.video), self.num_frames, self.image_size)
        frames = self.cache.get(key)
        if frames is None:
            frames = load_clip(record.video, self.num_frames, self.image_size)
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


# ================================================================================================ synthsign
def synthsign_params(config: Config) -> dict:
    """Everything that determines the generated synthsign clips (its hash names the cache folder)."""
    return {
        "version": SYNTHSIGN_VERSION,
        "num_clips": config.synthsign_num_clips,
        "num_signers": config.synthsign_num_signers,
        "image_size": config.image_size,
        "num_frames": config.num_frames,
        "seed": SYNTHSIGN_SEED,
        "prompts": list(config.sample_prompts),
    }


def synthsign_dir(config: Config) -> Path:
    """`<data_dir or <project>/.cache/synthsign>/<16 hex digits of the generation parameters' hash>/`."""
    root = Path(config.data_dir) if config.data_dir else SYNTHSIGN_CACHE_ROOT
    digest = hashlib.sha256(json.dumps(synthsign_params(config), sort_keys=True).encode()).hexdigest()[:16]
    return root / digest


def synthsign_plan(num_clips: int, num_signers: int, prompts: Sequence[str], seed: int) -> list[dict]:
    """The clips to render: [{id, caption, signer (int), seed}]. Each sample prompt is signed by up to
    `num_signers` different signers (at most a quarter of the clips are prompts); the rest are random sentences
    of 2-5 vocabulary glosses, assigned to signers round-robin."""
    rng = np.random.default_rng(seed)
    prompts = [p for p in prompts if p.strip()]
    repeats = max(1, min(num_signers, num_clips // (4 * len(prompts)))) if prompts else 0
    chosen = [(prompt, r % num_signers) for r in range(repeats) for prompt in prompts][:num_clips]
    while len(chosen) < num_clips:
        chosen.append((synthsign.random_caption(rng), len(chosen) % num_signers))
    clip_seeds = rng.integers(0, 2**31, size=num_clips)
    return [
        {"id": f"{synthsign.signer_name(s)}_{i:05d}", "caption": caption, "signer": s, "seed": int(clip_seeds[i])}
        for i, (caption, s) in enumerate(chosen)
    ]


def _render_clips(folder: Path, params: dict, clips: list[dict]) -> np.ndarray:
    """Render `clips` into `folder` as `<id>.gif` + `<id>.txt`; returns their keypoints float32 (N, F, 2, 2)."""
    keypoints = []
    for clip in clips:
        frames, kp = synthsign.render_clip(
            clip["caption"], clip["signer"], params["num_frames"], params["image_size"], seed=clip["seed"]
        )
        write_gif(folder / f"{clip['id']}.gif", frames)
        (folder / f"{clip['id']}.txt").write_text(clip["caption"] + "\n", encoding="utf-8")
        keypoints.append(kp)
    return np.stack(keypoints)


def _render_all(folder: Path, params: dict, plan: list[dict]) -> np.ndarray:
    """`_render_clips` over the plan, in forked worker processes (one per usable core) for large plans on Linux.
    Each clip depends only on its plan entry, so the result is the same either way."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8)
    if workers < 2 or len(plan) < PARALLEL_MIN_CLIPS or sys.platform != "linux":
        return _render_clips(folder, params, plan)
    chunks = [plan[i : i + 64] for i in range(0, len(plan), 64)]
    context = multiprocessing.get_context("fork")  # workers only use numpy and PIL
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        parts = list(pool.map(_render_clips, [folder] * len(chunks), [params] * len(chunks), chunks))
    return np.concatenate(parts)


def generate_synthsign(target: Path, params: dict) -> Path:
    """Render the clips of `params` into `target` atomically: everything is written to a temporary sibling folder
    which is renamed to `target` at the end, so a crash never leaves a half-written cache.

    Layout: `<id>.gif`, `<id>.txt`, `keypoints.npz` (`ids` (N,), `keypoints` float32 (N, F, 2, 2)),
    `manifest.json` ({params, clips: [{id, caption, signer, seed}]}).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    plan = synthsign_plan(params["num_clips"], params["num_signers"], params["prompts"], params["seed"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        keypoints = _render_all(tmp, params, plan)
        np.savez(tmp / "keypoints.npz", ids=np.array([c["id"] for c in plan]), keypoints=keypoints)
        (tmp / "manifest.json").write_text(json.dumps({"params": params, "clips": plan}, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "manifest.json").is_file():  # not a concurrent generator winning the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


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


def recognizer_dir(config: Config) -> Path:
    """Where back-translation recognizers are cached: `<data_dir or <project>/.cache/synthsign>/recognizers/`."""
    return synthsign_dir(config).parent / "recognizers"


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
    raise DataError(f"key 'dataset' has value {config.dataset!r}; allowed values: synthsign, folder, manifest")


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
        raise DataError(f"key 'split_mode' has value {mode!r}; allowed values: signer_disjoint, random")
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
    skipped_files: [{path, reason}], num_skipped}.
    """
    full, skipped = load_dataset(config, cache_bytes)
    signers = [record.signer for record in full.records]
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
    return train, val, stats


# ================================================================================================ evaluation captions
CAPTION_SPLITS = ("seen", "novel", "paraphrase")
EVAL_CAPTION_SEED = 0  # which seen captions, their signers and render seeds, and the paraphrases' words: fixed


@dataclass(frozen=True)
class EvaluationClip:
    """One evaluation clip: the caption the model is given, what it must sign, and the real clip that signs it."""

    split: str  # "seen", "novel" or "paraphrase"
    caption: str
    glosses: tuple[str, ...]  # synthsign: `synthsign.gloss_sequence(caption)`; other data: the caption's words
    signer: str  # the real clip's signer
    seed: int  # the generated clip's sampling seed
    source: str  # "validation <id>", or "rendered with seed <render seed>" (a seen caption by a held-out signer)
    frames: np.ndarray  # the real clip, uint8 (F, H, W, 3)
    keypoints: Optional[np.ndarray]  # its ground-truth hand centres (F, 2, 2), or None


def caption_key(caption: str, synthsign_glosses: bool) -> tuple[str, ...]:
    """What makes two captions 'the same' for the splits: the gloss sequence (synthsign) or the lower-cased words."""
    return tuple(synthsign.gloss_sequence(caption) if synthsign_glosses else synthsign.tokenize(caption))


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


def evaluation_clips(config: Config, train: ClipDataset, val: ClipDataset, num_clips: int) -> tuple[list[EvaluationClip], dict]:
    """The evaluation set, split by caption: ([EvaluationClip] ordered seen, novel, paraphrase; {split: why it is
    empty, or short of its share}).

    * seen: captions whose `caption_key` occurs in the training split, each signed by a signer who does not sign it in
      training. synthsign: the distinct training gloss sequences, the sample prompts' first, then the rest in an
      `EVAL_CAPTION_SEED` order, each RENDERED for a held-out signer (round-robin over the validation signers who do not
      sign it in training; all other signers if none) with a seeded render seed. Other data: the validation clips
      whose caption occurs in training, in split order.
    * novel: the validation clips, in split order, whose caption key does not occur in training.
    * paraphrase (synthsign only): the first seen clips with their caption reworded by `synthsign.paraphrase` (same
      glosses, so the same real clip and signer); sampled with the seen clip's seed, so seen and paraphrase differ in
      wording only.
    num_clips is divided by `split_sizes` (capacities: distinct seen captions, novel validation clips, seen clips).
    Sampling seeds: seen clip i gets seed i, novel clip j gets n_seen + j. Validation clips that do not decode are
    skipped with a warning. Deterministic.
    """
    synth = train.has_keypoints and config.dataset == "synthsign"
    splits = CAPTION_SPLITS if synth else CAPTION_SPLITS[:2]
    train_keys: dict[tuple, str] = {}
    train_signers: dict[tuple, set] = {}
    for record in train.records:
        key = caption_key(record.caption, synth)
        train_keys.setdefault(key, record.caption)
        train_signers.setdefault(key, set()).add(record.signer)
    val_seen, val_novel = [], []
    for i, record in enumerate(val.records):
        (val_seen if caption_key(record.caption, synth) in train_keys else val_novel).append(i)
    rng = np.random.default_rng(EVAL_CAPTION_SEED)
    if synth:
        prompts = [k for k in dict.fromkeys(caption_key(p, True) for p in config.sample_prompts) if k in train_keys]
        rest = sorted(set(train_keys) - set(prompts))
        seen_keys = prompts + [rest[i] for i in rng.permutation(len(rest))]
        capacities = [len(seen_keys), len(val_novel), len(seen_keys)]
    else:
        capacities = [len(val_seen), len(val_novel)]
    sizes = dict(zip(splits, split_sizes(num_clips, capacities)))
    if synth:
        sizes["paraphrase"] = min(sizes["paraphrase"], sizes["seen"])

    def from_validation(split: str, indices: list[int], wanted: int, first_seed: int) -> list[EvaluationClip]:
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

    clips: list[EvaluationClip] = []
    if synth:
        held_out = [synthsign.signer_index(s) for s in val.signers]
        everyone = sorted({synthsign.signer_index(r.signer) for r in train.records} | set(held_out))
        for i, key in enumerate(seen_keys[: sizes["seen"]]):
            busy = {synthsign.signer_index(s) for s in train_signers[key]}
            choices = [s for s in held_out if s not in busy] or [s for s in everyone if s not in busy] or everyone
            signer, render_seed = choices[i % len(choices)], int(rng.integers(0, 2**31))
            caption = train_keys[key]
            frames, keypoints = synthsign.render_clip(caption, signer, config.num_frames, config.image_size, render_seed)
            clips.append(EvaluationClip("seen", caption, key, synthsign.signer_name(signer), i,
                                        f"rendered with seed {render_seed}", frames, keypoints))
    else:
        clips += from_validation("seen", val_seen, sizes["seen"], 0)
    clips += from_validation("novel", val_novel, sizes["novel"], len(clips))
    if synth:
        for seen in clips[: sizes["paraphrase"]]:
            clips.append(dataclasses.replace(seen, split="paraphrase", caption=synthsign.paraphrase(seen.caption, rng)))
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
    return clips, short
