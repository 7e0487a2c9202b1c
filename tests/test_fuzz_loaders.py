"""Fuzz the data loaders: arbitrary or mutated bytes in place of a video never crash a run. A bad file is skipped and
counted (at scan time) or replaced by the next usable clip (at load time); nothing else escapes."""
from __future__ import annotations

import io
import shutil
import warnings

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from t2s.data.datasets import ClipDataset, read_manifest, scan_folder
from t2s.data.records import DataError
from t2s.data.releases import read_how2sign, read_phoenix14t
from t2s.data.video import UnusableFile, load_clip

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



# ------------------------------------------------------------------------------------------------ release layouts
PHOENIX_HEADER = "name|video|start|end|speaker|orth|translation"
HOW2SIGN_HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE"


def good_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((26, 21, 3), 90, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD_PNG = good_png()


def good_mp4(path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(10):
            frame = np.full((16, 16, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_mp4") / "good.mp4"
    good_mp4(path)
    return path


def _load_every_item(records) -> None:
    dataset = ClipDataset(records, num_frames=4, image_size=8)
    for i in range(len(dataset)):
        clip, text, signer = dataset[i]  # a clip that probed fine but fails to decode is replaced, not raised
        assert clip.shape == (3, 4, 8, 8) and isinstance(text, str) and isinstance(signer, str)


@FUZZ
@given(png=video_bytes().map(lambda b: b if b else GOOD_PNG[:8]), corpus=st.one_of(st.binary(max_size=512), st.just(None)))
def test_phoenix_reader_on_bad_frames_and_arbitrary_corpus_bytes(tmp_path_factory, png, corpus):
    root = tmp_path_factory.getbasetemp() / "fuzz_phoenix"
    shutil.rmtree(root, ignore_errors=True)
    frames = root / "features" / "fullFrame-210x260px" / "train"
    for name, data in (("good", GOOD_PNG), ("bad", png)):
        (frames / name / "1").mkdir(parents=True)
        (frames / name / "1" / "images0001.png").write_bytes(data)
    path = root / "annotations" / "manual" / "PHOENIX-2014-T.train.corpus.csv"
    path.parent.mkdir(parents=True)
    if corpus is None:
        rows = [f"{n}|{n}/1/*.png|-1|-1|Signer0{i}|GLOSS|satz {n}" for i, n in enumerate(("good", "bad"))]
        path.write_text("\n".join([PHOENIX_HEADER, *rows]) + "\n", encoding="utf-8")
    else:
        path.write_bytes(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            records, skipped = read_phoenix14t(root)
        except DataError as exc:  # an unreadable corpus file is a clear error naming the file or the root
            assert str(path) in str(exc) or str(root) in str(exc)
            return
        if corpus is None:
            names = {r.id for r in records}
            assert "train/good" in names
            assert ("train/bad" in names) != any("/bad/" in s["path"] for s in skipped)  # kept xor skipped
        _load_every_item(records)


@FUZZ
@given(
    clip=video_bytes(),
    times=st.tuples(st.sampled_from(["0", "0.3", "0.95", "-1", "nan", "inf", "2", "x", ""]),
                    st.sampled_from(["0.5", "1", "0.3", "99", "nan", "", "1e9"])),
    sentences=st.one_of(st.binary(max_size=512), st.just(None)),
)
def test_how2sign_reader_on_bad_clips_times_and_arbitrary_sentence_bytes(tmp_path_factory, mp4, clip, times, sentences):
    root = tmp_path_factory.getbasetemp() / "fuzz_how2sign"
    shutil.rmtree(root, ignore_errors=True)
    (root / "clips" / "nested").mkdir(parents=True)
    (root / "raw").mkdir()
    shutil.copy(mp4, root / "clips" / "nested" / "v1_0-rgb_front.mp4")
    (root / "clips" / "bad_0-rgb_front.mp4").write_bytes(clip)
    shutil.copy(mp4, root / "raw" / "v2-rgb_front.mp4")
    path = root / "how2sign_realigned_train.csv"
    if sentences is None:
        rows = ["v1\tv1-rgb_front\t0\tv1_0-rgb_front\t0\t1\tgood", "bad\tbad-rgb_front\t0\tbad_0-rgb_front\t0\t1\tbad",
                f"v2\tv2-rgb_front\t0\tv2_0-rgb_front\t{times[0]}\t{times[1]}\tcut"]
        path.write_text("\n".join([HOW2SIGN_HEADER, *rows]) + "\n", encoding="utf-8")
    else:
        path.write_bytes(HOW2SIGN_HEADER.encode() + b"\n" + sentences)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            records, skipped = read_how2sign(root)
        except DataError as exc:  # no usable sentence at all, or a file that cannot be parsed: named
            assert str(root) in str(exc)
            return
        if sentences is None:
            ids = {r.id for r in records}
            assert "v1_0-rgb_front" in ids
            assert ("bad_0-rgb_front" in ids) != any("bad_0-rgb_front" in s["path"] for s in skipped)
        _load_every_item(records)
