"""Datasets: every source, frame sampling, the clip cache, splits, the synthsign cache, and bad input."""
import json
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from t2s.config import PROJECT_ROOT, Config, from_dict
from t2s.data import datasets as data
from t2s.data.records import DataError, DataWarning
from t2s.data.splits import PARTS, build_datasets, evaluation_parts, part_indices, split_indices
from t2s.data.video import load_clip, read_video, sample_frame_indices, square_resize, to_clip, to_frames, write_gif
from t2s.eval.captions import evaluation_clips, split_sizes
from t2s.synthsign import dataset as synthdata
from t2s.synthsign import signer as synthsign
from t2s.synthsign.dataset import generate_synthsign, synthsign_dir, synthsign_params
from t2s.synthsign.glosses import gloss_sequence, tokenize

SIZE, FRAMES = 16, 6


# ------------------------------------------------------------------------------------------------ fixtures
def solid_frames(values, height=20, width=20) -> np.ndarray:
    """uint8 (len(values), H, W, 3), frame i filled with grey level values[i] (+ a red marker column 0)."""
    frames = np.zeros((len(values), height, width, 3), dtype=np.uint8)
    for i, v in enumerate(values):
        frames[i] = v
        frames[i, :, 0] = (255, 0, 0)
    return frames


def write_mp4(path: Path, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frame_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):  # unpadded numbers: natural order must put 10 after 9
        Image.fromarray(frame).save(folder / f"frame{i}.png")


def write_pair(folder: Path, stem: str, caption: str, frames=None) -> Path:
    video = folder / f"{stem}.gif"
    write_gif(video, solid_frames([10, 60, 110, 160]) if frames is None else frames)
    (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
    return video


def config(**overrides) -> Config:
    values = {"image_size": SIZE, "num_frames": FRAMES, "batch_size": 2, "channel_mult": [1, 2]}
    return from_dict({**values, **overrides})


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "clips"
    root.mkdir()
    for i in range(3):
        write_pair(root, f"alice_{i}", f"hello number {i}")
        write_pair(root, f"bob_{i}", f"thank you {i}")
    write_pair(root, "carol", "no underscore")
    return root


def check_item(item, caption=None, signer=None):
    clip, cap, who = item
    assert clip.shape == (3, FRAMES, SIZE, SIZE) and clip.dtype == torch.float32
    assert clip.min() >= -1.0 and clip.max() <= 1.0
    assert isinstance(cap, str) and isinstance(who, str)
    if caption is not None:
        assert cap == caption
    if signer is not None:
        assert who == signer


# ------------------------------------------------------------------------------------------------ frames
def test_frame_indices_are_uniform_and_short_clips_loop():
    assert sample_frame_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert sample_frame_indices(16, 16).tolist() == list(range(16))
    assert sample_frame_indices(3, 8).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert sample_frame_indices(1, 3).tolist() == [0, 0, 0]


def test_short_clip_is_looped_when_loaded(tmp_path):
    source = solid_frames([0, 100, 200])
    write_gif(tmp_path / "short.gif", source)
    clip = load_clip(tmp_path / "short.gif", 8, 20)
    assert clip.shape == (8, 20, 20, 3)
    for i in range(8):
        assert np.array_equal(clip[i], source[i % 3])


def test_gif_round_trip_is_exact_even_with_repeated_frames(tmp_path):
    source = solid_frames([5, 5, 5, 90, 90, 200])  # Pillow merges identical consecutive frames when writing
    write_gif(tmp_path / "rep.gif", source)
    assert np.array_equal(read_video(tmp_path / "rep.gif"), source)
    frames, keypoints = synthsign.render_clip("love is good", 2, 12, 32)  # 'love' holds still
    write_gif(tmp_path / "s.gif", frames)
    assert np.array_equal(read_video(tmp_path / "s.gif"), frames)


def test_non_square_frames_are_centre_cropped_then_resized():
    frame = np.zeros((20, 40, 3), dtype=np.uint8)
    frame[:, 10:30] = 200  # the centre square
    out = square_resize(frame, 10)
    assert out.shape == (10, 10, 3) and (out == 200).all()
    same = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    assert square_resize(same, 16) is not None and np.array_equal(square_resize(same, 16), same)


def test_clip_tensor_conversion_round_trips():
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    clip = to_clip(frames)
    assert clip.shape == (3, 4, 8, 8) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1 and to_clip(np.full((1, 1, 1, 3), 255, np.uint8)).eq(1).all()
    assert np.array_equal(to_frames(clip), frames)


# ------------------------------------------------------------------------------------------------ sources
def test_folder_source_loads_clips_captions_and_signers(folder):
    train, val, stats = build_datasets(config(dataset="folder", data_dir=str(folder), split_mode="random"))
    assert stats["train_clips"] + stats["val_clips"] == 7 and stats["num_skipped"] == 0
    items = {data_set.item_info(i) for data_set in (train, val) for i in range(len(data_set))}
    assert ("hello number 0", "alice") in items and ("thank you 2", "bob") in items
    assert ("no underscore", "carol") in items
    for data_set in (train, val):
        for i in range(len(data_set)):
            check_item(data_set[i], *data_set.item_info(i))
    clip = train[0][0]  # (3, F, H, W): the red marker column survives the 20 -> 16 resize at the left edge
    assert (clip[0, :, :, 0] > clip[1, :, :, 0] + 0.5).all() and torch.equal(clip[1], clip[2])


def test_signer_is_the_file_name_up_to_the_first_underscore():
    assert data.signer_from_filename("alice_001") == "alice"
    assert data.signer_from_filename("a_b_c") == "a"
    assert data.signer_from_filename("bob") == "bob"
    assert data.signer_from_filename("_x") == "_x"


def test_manifest_with_gif_mp4_and_frame_folders(tmp_path):
    source = solid_frames(np.linspace(0, 250, 12).astype(int), height=24, width=32)  # not square
    write_gif(tmp_path / "a.gif", source)
    write_mp4(tmp_path / "b.mp4", source)
    write_frame_folder(tmp_path / "c" / "1", source)
    write_frame_folder(tmp_path / "d", source[:3])  # short: looped
    absolute = tmp_path / "elsewhere" / "e.gif"
    absolute.parent.mkdir()
    write_gif(absolute, source)
    (tmp_path / "m.csv").write_text(
        "Video_Path,Sentence,Speaker\n"
        'a.gif,"hello, world",s1\n'
        "b.mp4,an mp4,s2\n"
        "c/1/*.png,phoenix style,s3\n"
        "d,a short folder,s3\n"
        f"{absolute},absolute path,s4\n",
        encoding="utf-8",
    )
    dataset, skipped = data.load_dataset(config(dataset="manifest", manifest=str(tmp_path / "m.csv")))
    assert skipped == [] and len(dataset) == 5
    assert [dataset.item_info(i) for i in range(5)] == [
        ("hello, world", "s1"), ("an mp4", "s2"), ("phoenix style", "s3"), ("a short folder", "s3"), ("absolute path", "s4")
    ]
    expected = np.stack([square_resize(source[i], SIZE) for i in sample_frame_indices(12, FRAMES)])
    for i in range(5):
        check_item(dataset[i])
    assert np.array_equal(dataset.frames(0), expected)
    assert np.abs(dataset.frames(1).astype(int) - expected).mean() < 8  # lossy codec
    assert np.array_equal(dataset.frames(2), expected)
    short = np.stack([square_resize(source[i % 3], SIZE) for i in range(FRAMES)])
    assert np.array_equal(dataset.frames(3), short)
    assert dataset.keypoints(0) is None and not dataset.has_keypoints


@pytest.mark.parametrize("name,delimiter", [("m.tsv", "\t"), ("m.csv", ";"), ("m.txt", "|")])
def test_manifest_delimiter_is_sniffed(tmp_path, name, delimiter):
    write_gif(tmp_path / "a.gif", solid_frames([1, 2]))
    header = delimiter.join(["name", "VIDEO", "speaker", "translation"])
    row = delimiter.join(["x", "a.gif", "signer9", "guten morgen"])
    (tmp_path / name).write_text(f"{header}\n{row}\n", encoding="utf-8")
    records, skipped = data.read_manifest(tmp_path / name)
    assert [(r.caption, r.signer, r.video.name) for r in records] == [("guten morgen", "signer9", "a.gif")]


def test_manifest_missing_column_names_file_columns_and_accepted_names(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("clip,caption\na.gif,hi\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"m\.csv lacks column\(s\) video \(one of: video, video_path, path, file\); "
                       r"signer \(one of: signer, signer_id, speaker\); columns found: \['clip', 'caption'\]"):
        data.read_manifest(path)
    path.write_bytes("video,caption,signer\na.gif,café,s1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"manifest .*m\.csv is not UTF-8 text"):
        data.read_manifest(path)


def test_manifest_rows_with_missing_videos_or_empty_fields_are_skipped(tmp_path):
    write_gif(tmp_path / "a.gif", solid_frames([1, 2]))
    (tmp_path / "m.csv").write_text("video,caption,signer\na.gif,ok,s1\nnope.gif,x,s1\na.gif,,s1\na.gif,y,\n")
    with pytest.warns(DataWarning) as record:
        records, skipped = data.read_manifest(tmp_path / "m.csv")
    assert len(records) == 1
    reasons = [s["reason"] for s in skipped]
    assert reasons[0].startswith("video not found") and "m.csv:3" in reasons[0]
    assert reasons[1].startswith("empty caption") and reasons[2].startswith("empty signer")
    assert len(record) == 3 and "nope.gif" in str(record[0].message)


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_data_dir_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError, match=f"data_dir '{missing}' does not exist"):
        build_datasets(config(dataset="folder", data_dir=str(missing)))
    with pytest.raises(DataError, match=r"manifest '.*nope\.csv' does not exist"):
        build_datasets(config(dataset="manifest", manifest=str(tmp_path / "nope.csv")))


def test_gif_without_caption_file_is_skipped_warned_and_counted(folder):
    write_gif(folder / "alice_9.gif", solid_frames([1, 2, 3]))
    with pytest.warns(DataWarning, match=r"alice_9\.gif: missing caption file alice_9\.txt"):
        train, val, stats = build_datasets(config(dataset="folder", data_dir=str(folder)))
    assert stats["num_skipped"] == 1 and stats["train_clips"] + stats["val_clips"] == 7
    assert stats["skipped_files"] == [{"path": str(folder / "alice_9.gif"), "reason": "missing caption file alice_9.txt"}]


def test_empty_and_non_utf8_captions_are_skipped_with_the_reason(folder):
    write_pair(folder, "alice_7", "   \n")
    write_gif(folder / "alice_8.gif", solid_frames([1, 2]))
    (folder / "alice_8.txt").write_bytes(b"caf\xe9")
    with pytest.warns(DataWarning) as record:
        _, _, stats = build_datasets(config(dataset="folder", data_dir=str(folder)))
    messages = [str(w.message) for w in record]
    assert any("alice_7.gif: caption file alice_7.txt is empty" in m for m in messages)
    assert any("alice_8.gif: caption file alice_8.txt is not UTF-8" in m for m in messages)
    assert stats["num_skipped"] == 2


def test_corrupt_and_zero_frame_videos_are_skipped_and_counted(tmp_path, folder):
    (folder / "bob_8.gif").write_bytes(b"GIF89a this is not a gif")
    (folder / "bob_8.txt").write_text("corrupt")
    (folder / "bob_9.gif").write_bytes(b"")
    (folder / "bob_9.txt").write_text("zero bytes")
    (folder / "bob_10.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)  # a header, no movie
    (folder / "bob_10.txt").write_text("garbage mp4")
    with pytest.warns(DataWarning) as record:
        _, _, stats = build_datasets(config(dataset="folder", data_dir=str(folder)))
    messages = sorted(str(w.message) for w in record if issubclass(w.category, DataWarning))
    assert len(messages) == 3 and all(": cannot decode video (" in m for m in messages)
    assert "bob_8.gif" in messages[1] and "bob_9.gif" in messages[2] and "bob_10.mp4" in messages[0]
    assert stats["num_skipped"] == 3
    assert {Path(s["path"]).name for s in stats["skipped_files"]} == {"bob_8.gif", "bob_9.gif", "bob_10.mp4"}
    empty = tmp_path / "empty_frames"
    empty.mkdir()
    (tmp_path / "m.csv").write_text(f"video,caption,signer\n{empty},no frames,s1\n")
    with pytest.warns(DataWarning, match=r"empty_frames: no frame images \(png/jpg\)"), \
            pytest.raises(DataError, match=r"no usable clips in .*m\.csv: all 1 candidate videos were skipped"):
        data.read_manifest(tmp_path / "m.csv")


def test_nothing_usable_is_an_error_with_the_count_and_reasons(tmp_path):
    for i in range(3):
        write_gif(tmp_path / f"s_{i}.gif", solid_frames([1, 2]))
    (tmp_path / "s_0.txt").write_text("")
    with pytest.warns(DataWarning), pytest.raises(
        DataError, match=r"all 3 candidate videos were skipped \(2 x missing caption file; 1 x caption file is empty\)"
    ):
        build_datasets(config(dataset="folder", data_dir=str(tmp_path)))


def test_a_folder_without_videos_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"holds no videos .*found: \['readme.txt'\]"):
        build_datasets(config(dataset="folder", data_dir=str(tmp_path)))


def test_a_clip_that_fails_to_decode_later_is_replaced_not_fatal(folder):
    dataset, _ = data.load_dataset(config(dataset="folder", data_dir=str(folder)))
    broken = [r.video for r in dataset.records].index(folder / "alice_1.gif")
    (folder / "alice_1.gif").write_bytes(b"GIF89a" + b"\x00" * 5)  # corrupted after the build-time probe
    with pytest.warns(DataWarning, match=r"cannot decode .*alice_1\.gif.*using the next clip"):
        clip, caption, signer = dataset[broken]
    assert caption == dataset.item_info(broken + 1)[0]
    check_item((clip, caption, signer))
    assert [Path(f["path"]).name for f in dataset.decode_failures] == ["alice_1.gif"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad: skipped silently from now on
        assert dataset[broken][1] == caption


def test_decoded_clips_are_cached_in_memory(folder):
    dataset, _ = data.load_dataset(config(dataset="folder", data_dir=str(folder)))
    first = dataset[0][0]
    dataset.records[0].video.unlink()  # a second epoch must not decode again
    assert torch.equal(dataset[0][0], first) and len(dataset.cache) == 1


def test_clip_cache_evicts_least_recently_used_within_its_byte_budget():
    cache = data.ClipCache(max_bytes=250)
    for key in "abc":
        cache.put(key, np.zeros(100, dtype=np.uint8))
    assert cache.get("a") is None and cache.get("b") is not None and cache.nbytes == 200
    cache.put("d", np.zeros(100, dtype=np.uint8))  # b was used more recently than c
    assert cache.get("c") is None and cache.get("b") is not None and cache.get("d") is not None
    cache.put("huge", np.zeros(1000, dtype=np.uint8))
    assert cache.get("huge") is None and cache.nbytes <= 250


# ------------------------------------------------------------------------------------------------ splits
def test_signer_disjoint_split_has_no_signer_on_both_sides(folder):
    for seed in range(5):
        train, val, stats = build_datasets(config(dataset="folder", data_dir=str(folder), split_seed=seed))
        assert set(stats["train_signers"]).isdisjoint(stats["val_signers"])
        assert {s for i in range(len(val)) for s in [val.item_info(i)[1]]} == set(stats["val_signers"])
        assert stats["val_clips"] >= 1 and stats["train_clips"] >= 1 and stats["mode"] == "signer_disjoint"


def test_signer_disjoint_split_approximates_the_ratio_and_depends_on_the_seed():
    signers = [f"s{i}" for i in range(10) for _ in range(10)]
    choices = set()
    for seed in range(6):
        train, val = split_indices(signers, "signer_disjoint", 0.8, seed)
        assert len(val) == 20 and sorted(train + val) == list(range(100))
        choices.add(tuple(sorted({signers[i] for i in val})))
    assert len(choices) > 1
    assert split_indices(signers, "signer_disjoint", 0.8, 3) == split_indices(signers, "signer_disjoint", 0.8, 3)


def test_signer_disjoint_split_with_one_signer_explains_to_use_random(tmp_path):
    for i in range(3):
        write_pair(tmp_path, f"solo_{i}", f"caption {i}")
    with pytest.raises(DataError, match=r"needs at least 2 signers.*only one \('solo'\).*set split_mode: random"):
        build_datasets(config(dataset="folder", data_dir=str(tmp_path)))
    train, val, stats = build_datasets(config(dataset="folder", data_dir=str(tmp_path), split_mode="random"))
    assert (len(train), len(val)) == (2, 1) and stats["train_signers"] == stats["val_signers"] == ["solo"]


def test_random_split_is_seeded_and_keeps_at_least_one_validation_clip():
    signers = ["a"] * 30
    train, val = split_indices(signers, "random", 0.99, 0)
    assert len(val) == 1 and len(train) == 29
    assert split_indices(signers, "random", 0.7, 1) == split_indices(signers, "random", 0.7, 1)
    assert split_indices(signers, "random", 0.7, 1) != split_indices(signers, "random", 0.7, 2)
    with pytest.raises(DataError, match="needs at least 2"):
        split_indices(["a"], "random", 0.5, 0)


# ------------------------------------------------------------------------------------------------ synthsign
def synth_config(tmp_path, **overrides) -> Config:
    return config(**{"dataset": "synthsign", "data_dir": str(tmp_path / "cache"), "synthsign_num_clips": 40, **overrides})


def test_synthsign_dataset_is_generated_into_a_hashed_cache_folder(tmp_path):
    cfg = synth_config(tmp_path)
    train, val, stats = build_datasets(cfg)
    folder = synthsign_dir(cfg)
    assert folder.parent == tmp_path / "cache" and len(folder.name) == 16 and stats["source"] == str(folder)
    assert len(list(folder.glob("*.gif"))) == len(list(folder.glob("*.txt"))) == 40
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["params"] == synthsign_params(cfg) and len(manifest["clips"]) == 40
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp folder left
    assert stats["train_clips"] + stats["val_clips"] == 40 and stats["num_skipped"] == 0
    assert len(stats["train_signers"]) + len(stats["val_signers"]) == 8
    assert set(stats["train_signers"]).isdisjoint(stats["val_signers"])
    captions = [d.item_info(i)[0] for d in (train, val) for i in range(len(d))]
    for prompt in cfg.sample_prompts:
        assert prompt in captions
    assert all(2 <= len(c.split()) <= 5 for c in captions)
    check_item(train[0])


def test_synthsign_keypoints_match_the_loaded_frames(tmp_path):
    train, val, _ = build_datasets(synth_config(tmp_path))
    for dataset in (train, val):
        assert dataset.has_keypoints
        for i in range(len(dataset)):
            frames, keypoints = dataset.frames(i), dataset.keypoints(i)
            assert keypoints.shape == (FRAMES, 2, 2) and keypoints.dtype == np.float32
            caption, signer = dataset.item_info(i)
            for f in range(FRAMES):
                for h, colour in enumerate(synthsign.HAND_COLORS.values()):
                    rows, cols = np.nonzero(np.all(frames[f] == colour, axis=-1))
                    assert abs(cols.mean() - keypoints[f, h, 0]) <= 1 and abs(rows.mean() - keypoints[f, h, 1]) <= 1
            rerendered, _ = synthsign.render_clip(caption, synthsign.signer_index(signer), FRAMES, SIZE,
                                                  seed=_clip_seed(dataset, i))
            assert np.array_equal(rerendered, frames)


def _clip_seed(dataset, index) -> int:
    manifest = json.loads((Path(dataset.source) / "manifest.json").read_text())
    return {c["id"]: c["seed"] for c in manifest["clips"]}[dataset.records[index].id]


def test_synthsign_cache_is_reused_and_deterministic(tmp_path):
    cfg = synth_config(tmp_path)
    build_datasets(cfg)
    folder = synthsign_dir(cfg)
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    build_datasets(cfg)
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
    other = synth_config(tmp_path / "other")
    build_datasets(other)
    for path in folder.iterdir():
        assert path.read_bytes() == (synthsign_dir(other) / path.name).read_bytes(), path.name
    assert synthsign_dir(synth_config(tmp_path, image_size=32)) != folder


def test_synthsign_parallel_generation_equals_serial(tmp_path, monkeypatch):
    params = {**synthsign_params(synth_config(tmp_path)), "num_clips": 130}
    generate_synthsign(tmp_path / "serial", params)
    monkeypatch.setattr(synthdata, "PARALLEL_MIN_CLIPS", 1)
    generate_synthsign(tmp_path / "parallel", params)
    for path in (tmp_path / "serial").iterdir():
        assert path.read_bytes() == (tmp_path / "parallel" / path.name).read_bytes(), path.name


def test_corrupt_synthsign_cache_is_an_error_and_is_left_alone(tmp_path):
    cfg = synth_config(tmp_path)
    build_datasets(cfg)
    folder = synthsign_dir(cfg)
    (folder / "manifest.json").write_text("{not json")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(DataError, match=r"synthsign cache .* is incomplete or corrupt .*delete the folder"):
        build_datasets(cfg)
    assert sorted(p.name for p in folder.iterdir()) == before and (folder / "manifest.json").read_text() == "{not json"


def test_a_crash_during_generation_leaves_no_partial_cache(tmp_path, monkeypatch):
    existing = synth_config(tmp_path)
    build_datasets(existing)
    kept = {p.name: p.read_bytes() for p in synthsign_dir(existing).iterdir()}
    render, calls = synthsign.render_clip, []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("simulated crash")
        return render(*args, **kwargs)

    monkeypatch.setattr(synthsign, "render_clip", failing_render)
    crashing = synth_config(tmp_path, synthsign_num_clips=20)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_datasets(crashing)
    assert not synthsign_dir(crashing).exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [synthsign_dir(existing).name]
    assert {p.name: p.read_bytes() for p in synthsign_dir(existing).iterdir()} == kept


def test_synthsign_default_cache_is_under_the_project(tmp_path):
    cfg = config()
    assert synthsign_dir(cfg).parent == PROJECT_ROOT / ".cache" / "synthsign"


def test_400_synthsign_clips_are_all_generated_and_split_by_signer(tmp_path):
    """The size the small scale uses; how long it takes is the benchmark's business, not a test's."""
    cfg = from_dict({"image_size": 32, "num_frames": 8, "synthsign_num_clips": 400, "data_dir": str(tmp_path),
                     "channel_mult": [1, 2]})
    train, val, _ = build_datasets(cfg)
    assert len(train) + len(val) == 400
    train_signers = {train.item_info(i)[1] for i in range(len(train))}
    val_signers = {val.item_info(i)[1] for i in range(len(val))}
    assert train_signers and val_signers and not train_signers & val_signers


# ------------------------------------------------------------------------------------------------ evaluation captions
def test_split_sizes_divide_evenly_within_the_candidates():
    assert split_sizes(24, [100, 100, 100]) == [8, 8, 8]
    assert split_sizes(8, [100, 100, 100]) == [3, 3, 2]
    assert split_sizes(24, [100, 3, 100]) == [11, 3, 10]  # what novel cannot take goes to the others in order
    assert split_sizes(10, [0, 20]) == [0, 10]
    assert split_sizes(50, [4, 5, 6]) == [4, 5, 6]  # never more than there are


def test_evaluation_clips_split_synthsign_captions_into_seen_novel_and_paraphrase(tmp_path):
    cfg = synth_config(tmp_path, synthsign_num_clips=80)
    train, val, _ = build_datasets(cfg)
    clips, short = evaluation_clips(cfg, train, val, 9)
    assert [c.split for c in clips] == ["seen"] * 3 + ["novel"] * 3 + ["paraphrase"] * 3 and short == {}
    train_glosses = {tuple(gloss_sequence(train.item_info(i)[0])): train.item_info(i)[1]
                     for i in range(len(train))}
    seen, novel, paraphrase = clips[:3], clips[3:6], clips[6:]
    # the sample prompts come first among the seen captions, each signed by a held-out (validation) signer
    assert [c.caption for c in seen][: len(cfg.sample_prompts)] == cfg.sample_prompts[:3]
    for clip in seen:
        assert clip.glosses in train_glosses and clip.signer in val.signers and clip.source.startswith("rendered")
        frames, keypoints = synthsign.render_clip(clip.caption, synthsign.signer_index(clip.signer), FRAMES, SIZE,
                                                  seed=int(clip.source.split()[-1]))
        assert np.array_equal(frames, clip.frames) and np.array_equal(keypoints, clip.keypoints)
    for clip in novel:  # validation clips whose glosses never occur in training
        assert clip.glosses not in train_glosses and clip.source.startswith("validation ")
        index = [r.id for r in val.records].index(clip.source.split()[-1])
        assert np.array_equal(clip.frames, val.frames(index)) and clip.caption == val.item_info(index)[0]
    for original, reworded in zip(seen, paraphrase):  # same glosses, real clip and seed; other words
        assert reworded.glosses == original.glosses and reworded.seed == original.seed
        assert reworded.frames is original.frames and tokenize(reworded.caption) != tokenize(
            original.caption)
    assert [c.seed for c in seen + novel] == list(range(6))
    again, _ = evaluation_clips(cfg, train, val, 9)  # deterministic
    assert [(c.caption, c.signer, c.seed) for c in again] == [(c.caption, c.signer, c.seed) for c in clips]


@pytest.mark.parametrize("scale", ["micro", "tiny"])
def test_the_development_and_test_parts_share_no_caption_and_no_signer(tmp_path, scale):
    """Every clip of each part (its rendered seen captions, novel validation clips, paraphrases, and the validation
    clips its held-out loss reads): no signer and no caption (gloss sequence) in both parts, and none of the parts'
    signers trains. The shipped scales hold out 2 synthsign signers: one per part."""
    from t2s.config import load_config

    cfg = load_config("baseline", scale, {"data_dir": str(tmp_path / "synthsign")})
    train, val, _ = build_datasets(cfg)
    parts = evaluation_parts(cfg, train, val)
    assert parts.signer_disjoint and len(val.signers) == 2
    signers, keys = {}, {}
    for part in PARTS:
        clips, _ = evaluation_clips(cfg, train, val, 1000, part)
        held_out = [val.records[i] for i in part_indices(cfg, train, val, part)]
        assert clips and held_out
        signers[part] = {c.signer for c in clips} | {r.signer for r in held_out}
        keys[part] = {c.glosses for c in clips} | {tuple(gloss_sequence(r.caption)) for r in held_out}
        assert signers[part] == set(parts.part_signers(part))
    assert not signers["dev"] & signers["test"] and not keys["dev"] & keys["test"]
    assert not (signers["dev"] | signers["test"]) & set(train.signers)
    # every validation clip of a test signer is a test clip; the parts are deterministic
    assert {r.signer for r in held_out} == signers["test"]
    assert evaluation_parts(cfg, train, val) == parts


def test_evaluation_clips_of_a_small_budget_say_which_split_is_empty_and_why(tmp_path):
    cfg = synth_config(tmp_path)
    train, val, _ = build_datasets(cfg)
    clips, short = evaluation_clips(cfg, train, val, 2)
    assert [c.split for c in clips] == ["seen", "novel"]
    assert short == {"paraphrase": "eval_num_clips = 2 leaves none for it (seen 1, novel 1, paraphrase 0)"}


def test_evaluation_clips_of_folder_data_have_no_paraphrases(folder):
    for i, caption in enumerate(["hello there", "good night", "hello there", "see you", "good night", "bye"]):
        write_pair(folder, f"s{i % 3}_{i}", caption)
    cfg = config(dataset="folder", data_dir=str(folder), split_mode="random", train_ratio=0.5)
    train, val, _ = build_datasets(cfg)
    clips, short = evaluation_clips(cfg, train, val, 10)
    train_captions = {train.item_info(i)[0] for i in range(len(train))}
    test_part = part_indices(cfg, train, val, "test")
    assert {c.split for c in clips} <= {"seen", "novel"} and 0 < len(clips) == len(test_part) < len(val)
    for clip in clips:
        assert (clip.caption in train_captions) == (clip.split == "seen") and clip.keypoints is None
    assert "synonym table" in short["paraphrase"]
