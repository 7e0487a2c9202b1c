"""Fuzz the data loaders: arbitrary or mutated bytes in place of a video never crash a run. A bad file is skipped and
counted (at scan time) or replaced by the next usable clip (at load time); nothing else escapes."""
from __future__ import annotations

import io
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from t2s.data import ClipDataset, DataError, UnusableFile, load_clip, read_manifest, scan_folder

EXAMPLES = 1000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def good_gif(frames: int = 3, size: int = 8) -> bytes:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


GOOD = good_gif()


@st.composite
def video_bytes(draw):
    """Random bytes, or a valid GIF with a few bytes flipped, truncated or spliced: the mutations a disk or a
    download produces."""
    kind = draw(st.sampled_from(["random", "flip", "truncate", "splice"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(GOOD)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(max_size=256)) + bytes(data[at:])
    for _ in range(draw(st.integers(1, 16))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_folder")
    (root / "signerA_good.gif").write_bytes(GOOD)
    (root / "signerA_good.txt").write_text("hello", encoding="utf-8")
    return root


@FUZZ
@given(data=video_bytes(), ext=st.sampled_from([".gif", ".mp4", ".webm", ".avi"]))
def test_load_clip_on_arbitrary_bytes_raises_only_unusable_file(tmp_path_factory, data, ext):
    path = tmp_path_factory.getbasetemp() / f"fuzz_clip{ext}"
    path.write_bytes(data)
    try:
        clip = load_clip(path, num_frames=4, image_size=8)
    except UnusableFile:
        return
    assert clip.shape == (4, 8, 8, 3) and clip.dtype == np.uint8


@FUZZ
@given(data=video_bytes(), caption=st.binary(max_size=64))
def test_folder_scan_skips_and_counts_a_bad_pair(folder, data, caption):
    (folder / "signerB_bad.gif").write_bytes(data)
    (folder / "signerB_bad.txt").write_bytes(caption)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records, skipped = scan_folder(folder)
    ids = {r.id for r in records}
    assert "signerA_good" in ids
    assert ("signerB_bad" in ids) != any("signerB_bad" in s["path"] for s in skipped)  # kept xor skipped
    dataset = ClipDataset(records, num_frames=4, image_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(dataset)):
            clip, text, signer = dataset[i]  # a file that probed fine but fails to decode is replaced, not raised
            assert clip.shape == (3, 4, 8, 8) and isinstance(text, str)


@FUZZ
@given(data=video_bytes(), manifest=st.one_of(st.binary(max_size=512), st.just(None)))
def test_manifest_reader_on_arbitrary_bytes(tmp_path_factory, data, manifest):
    root = tmp_path_factory.getbasetemp() / "fuzz_manifest"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "good.gif").write_bytes(GOOD)
    (root / "bad.gif").write_bytes(data)
    path = root / "manifest.csv"
    if manifest is None:
        path.write_text("video,caption,signer\ngood.gif,hello,a\nbad.gif,world,b\n", encoding="utf-8")
    else:
        path.write_bytes(manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            records, skipped = read_manifest(path)
        except DataError as exc:  # an unreadable manifest is a clear error naming the file
            assert str(path) in str(exc)
            return
    assert manifest is not None or any(r.video.name == "good.gif" for r in records)

