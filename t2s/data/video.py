"""Video files: decoding (GIF, PyAV containers, frame folders) and sampling to a clip, and the kit's one GIF writer.

A clip in memory is uint8 `(frames, height, width, 3)` ("frames") or float32 `(3, frames, height, width)` in [-1, 1]
("clip"); `to_clip` / `to_frames` convert. Frame sampling: `num_frames` frames uniformly over the source's timeline
(np.linspace, rounded); a source with fewer frames is LOOPED (frame i is source frame i mod n). A GIF's timeline
honours frame durations: GIF writers (Pillow among them) merge identical consecutive frames into one longer frame, so
a frame shown k times as long as the shortest counts k times. Frames are centre-cropped to a square (if not square)
and resized with PIL bilinear; frames already at the size are used untouched. A file that cannot be used raises
`UnusableFile(reason)` (the dataset skips it with a warning).

Public: `read_video`, `load_clip`, `probe_video`, `write_gif`, `to_clip`, `to_frames`, `sample_frame_indices`,
`square_resize`, `list_frame_images`, `UnusableFile`, `VIDEO_EXTENSIONS`, `IMAGE_EXTENSIONS`, `GIF_FRAME_MS`
Imports `t2s.rundir` (atomic writes) only.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch
from PIL import Image, ImageSequence

from t2s.rundir import atomic_write_bytes

VIDEO_EXTENSIONS = (".gif", ".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")
PIL_VIDEO_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GIF_FRAME_MS = 100


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


def frame_folder(path: Path) -> Optional[tuple[Path, str]]:
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


def _read_av(path: Path, start: Optional[float] = None, end: Optional[float] = None) -> list[np.ndarray]:
    """Every frame of a PyAV-decodable video, or (with `start`/`end` seconds) those whose time is in [start, end]."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UnusableFile("no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        lo = -np.inf if start is None else start
        hi = np.inf if end is None else end
        offset = 0.0  # the time of the first decoded frame, for frames without a timestamp
        if start is not None and start > 0 and stream.time_base:  # to the keyframe before `start`, not decode from 0
            try:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
                offset = start
            except (av.error.FFmpegError, ValueError, OverflowError):
                pass  # not seekable: decode from the start
        frames = []
        for i, frame in enumerate(container.decode(stream)):
            time = frame.time if frame.time is not None else offset + i / rate
            if time > hi:
                break
            if time >= lo:
                frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise UnusableFile("zero frames" if start is None and end is None else f"no frames between {lo}s and {hi}s")
    return frames


def _read_sampled(path: Path, num_frames: int, start=None, end=None) -> list[np.ndarray]:
    """`num_frames` frames (uint8 (H, W, 3) each) sampled uniformly (or looped) from the video at `path` (from its
    `start`..`end` seconds when given: PyAV containers only)."""
    if start is not None or end is not None:
        frames = _read_av(path, start, end)
        return [frames[i] for i in sample_frame_indices(len(frames), num_frames)]
    folder = frame_folder(path)
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
    folder = frame_folder(path)
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


def load_clip(
    path: Path | str, num_frames: int, image_size: int, start: Optional[float] = None, end: Optional[float] = None
) -> np.ndarray:
    """A video (or its `start`..`end` seconds) as uint8 (num_frames, image_size, image_size, 3): sampled (looped if
    short), cropped, resized. Any decoder failure comes out as UnusableFile(reason)."""
    try:
        frames = _read_sampled(Path(path), num_frames, start, end)
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
        folder = frame_folder(path)
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
