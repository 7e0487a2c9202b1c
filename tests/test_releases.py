"""The release layouts: PHOENIX-2014-T (pipe-separated corpus files, PNG frame folders) and How2Sign (tab-separated
sentence files, per-sentence mp4 clips or raw videos cut by the realigned times), written here in exactly those
formats: loading, captions, signers, glosses, splits (official and the others), skips and errors."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data import FRAMES, SIZE, check_item, config, solid_frames, write_mp4

from t2s.config import ConfigError, from_dict
from t2s.data.records import DataError, DataWarning
from t2s.data.releases import phoenix_layout, read_how2sign
from t2s.data.splits import build_datasets
from t2s.data.video import UnusableFile, load_clip, read_video

PHOENIX_HEADER = "name|video|start|end|speaker|orth|translation"
HOW2SIGN_HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE"

# (split, name, speaker, orth, translation)
PHOENIX_ROWS = [
    ("train", "01April_2010_Thursday_heute-6694", "Signer04", "REGEN MORGEN", "morgen regnet es im norden"),
    ("train", "01April_2010_Thursday_heute-6695", "Signer01", "SONNE", "im süden scheint die sonne"),
    ("train", "02April_2010_Friday_tagesschau-1", "Signer05", "WIND STARK", "der wind weht stark"),
    ("dev", "11August_2010_Wednesday_tagesschau-2", "Signer01", "NEBEL", "nebel am morgen"),
    ("dev", "11August_2010_Wednesday_tagesschau-3", "Signer08", "KALT", "es wird kalt"),
    ("test", "25October_2010_Monday_tagesschau-17", "Signer01", "WARM", "es bleibt warm"),
]


def write_png_frames(folder: Path, count: int = 3, height: int = 26, width: int = 21) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(solid_frames([30 + 50 * i for i in range(count)], height, width)):
        Image.fromarray(frame).save(folder / f"images{i + 1:04d}.png")


def write_phoenix(root: Path, rows=PHOENIX_ROWS, splits=("train", "dev", "test")) -> Path:
    """A PHOENIX-2014-T release: annotations/manual/PHOENIX-2014-T.<split>.corpus.csv + the frame folders."""
    manual = root / "PHOENIX-2014-T" / "annotations" / "manual"
    manual.mkdir(parents=True, exist_ok=True)
    frames = root / "PHOENIX-2014-T" / "features" / "fullFrame-210x260px"
    for split in splits:
        lines = [PHOENIX_HEADER]
        for row_split, name, speaker, orth, translation in rows:
            if row_split == split:
                lines.append(f"{name}|{name}/1/*.png|-1|-1|{speaker}|{orth}|{translation}")
                write_png_frames(frames / split / name / "1")
        (manual / f"PHOENIX-2014-T.{split}.corpus.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def phoenix_config(root: Path, **overrides):
    return config(dataset="phoenix14t", data_dir=str(root), **overrides)


# ------------------------------------------------------------------------------------------------ PHOENIX-2014-T
def test_phoenix_official_split_uses_train_and_dev_and_holds_out_test(tmp_path):
    train, val, stats = build_datasets(phoenix_config(write_phoenix(tmp_path), split_mode="official"))
    assert (len(train), len(val)) == (3, 2) and stats["mode"] == "official" and stats["num_skipped"] == 0
    assert stats["held_out_clips"] == 1  # the test split
    assert {r.split for r in train.records} == {"train"} and {r.split for r in val.records} == {"dev"}
    record = next(r for r in train.records if r.signer == "Signer04")
    assert record.caption == "morgen regnet es im norden" and record.gloss == "REGEN MORGEN"
    assert record.id == "train/01April_2010_Thursday_heute-6694"
    check_item(train[train.records.index(record)], "morgen regnet es im norden", "Signer04")


@pytest.mark.parametrize("mode", ["random", "signer_disjoint"])
def test_phoenix_other_split_modes_use_every_present_split(tmp_path, mode):
    train, val, stats = build_datasets(phoenix_config(write_phoenix(tmp_path), split_mode=mode, train_ratio=0.6))
    assert len(train) + len(val) == 6
    if mode == "signer_disjoint":
        assert not set(stats["train_signers"]) & set(stats["val_signers"])


def test_phoenix_reads_whichever_corpus_files_are_present(tmp_path):
    write_phoenix(tmp_path, splits=("dev",))
    train, val, _ = build_datasets(phoenix_config(tmp_path, split_mode="random"))
    assert len(train) + len(val) == 2
    with pytest.raises(DataError, match=r"split_mode 'official' needs training clips .* split\(s\) dev"):
        build_datasets(phoenix_config(tmp_path, split_mode="official"))


def test_phoenix_layout_finds_the_frames_beside_the_corpus_and_never_walks_into_features(tmp_path):
    root = write_phoenix(tmp_path, splits=("train",))
    release = root / "PHOENIX-2014-T"
    hidden = release / "features" / "fullFrame-210x260px" / "dev"
    hidden.mkdir(parents=True)
    (hidden / "PHOENIX-2014-T.dev.corpus.csv").write_text(PHOENIX_HEADER + "\n", encoding="utf-8")
    (root / "features" / "fullFrame-210x260px").mkdir(parents=True)  # another, shallower: not beside the corpus
    (root / "loop").symlink_to(root)  # a symlink loop ends the walk there
    corpora, frames = phoenix_layout(root)
    assert list(corpora) == ["train"] and frames == release / "features" / "fullFrame-210x260px"


def test_phoenix_frames_are_sampled_looped_and_resized_from_the_pngs(tmp_path):
    train, _, _ = build_datasets(phoenix_config(write_phoenix(tmp_path), split_mode="official"))
    frames = train.frames(0)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert len({int(f[SIZE // 2, SIZE // 2, 1]) for f in frames}) == 3  # 3 PNG frames looped to 6
    assert train.frames(0) is frames  # cached


def test_phoenix_missing_and_corrupt_frames_and_empty_fields_are_skipped_and_named(tmp_path):
    root = write_phoenix(tmp_path)
    frames = root / "PHOENIX-2014-T" / "features" / "fullFrame-210x260px"
    for png in (frames / "train" / PHOENIX_ROWS[1][1] / "1").glob("*.png"):
        png.write_bytes(b"not a png")
    corpus = root / "PHOENIX-2014-T" / "annotations" / "manual" / "PHOENIX-2014-T.train.corpus.csv"
    with corpus.open("a", encoding="utf-8") as handle:
        handle.write("ghost|ghost/1/*.png|-1|-1|Signer02|X|nicht da\n")
        handle.write(f"{PHOENIX_ROWS[2][1]}|{PHOENIX_ROWS[2][1]}/1/*.png|-1|-1|Signer05|X|\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val, stats = build_datasets(phoenix_config(root, split_mode="official"))
    assert any(w.category is DataWarning and "ghost" in str(w.message) for w in caught)
    reasons = {Path(s["path"]).parts[-3]: s["reason"] for s in stats["skipped_files"]}
    assert "frame folder not found" in reasons["ghost"] and "corpus row" in reasons["ghost"]
    assert "cannot decode" in reasons[PHOENIX_ROWS[1][1]]
    assert "empty translation" in reasons[PHOENIX_ROWS[2][1]]
    assert len(train) == 2 and stats["num_skipped"] == 3


def test_phoenix_bad_release_roots_and_corpus_files_are_errors_naming_them(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(phoenix_config(tmp_path / "nope"))
    with pytest.raises(DataError, match="holds no PHOENIX-2014-T corpus file"):
        build_datasets(phoenix_config(tmp_path))
    (tmp_path / "PHOENIX-2014-T.train.corpus.csv").write_text("name,video,speaker\na,b,c\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"PHOENIX-2014-T.train.corpus.csv lacks column\(s\)"):
        build_datasets(phoenix_config(tmp_path))
    (tmp_path / "PHOENIX-2014-T.train.corpus.csv").write_bytes(b"\xff\xfe" + PHOENIX_HEADER.encode("utf-16-le"))
    with pytest.raises(DataError, match="is not UTF-8"):
        build_datasets(phoenix_config(tmp_path))


def test_release_config_validation_names_the_key_and_value():
    with pytest.raises(ConfigError, match="dataset 'phoenix14t' needs key 'data_dir'"):
        from_dict({"dataset": "phoenix14t"})
    with pytest.raises(ConfigError, match="dataset 'how2sign' needs key 'data_dir'"):
        from_dict({"dataset": "how2sign"})
    with pytest.raises(ConfigError, match="'split_mode' has value 'official' but dataset is 'folder'"):
        from_dict({"dataset": "folder", "data_dir": "x", "split_mode": "official"})
    with pytest.raises(ConfigError, match="allowed values: .*phoenix14t.*how2sign"):
        from_dict({"dataset": "phoenix"})


def test_micro_config_with_a_release_builds_datasets(tmp_path):
    from t2s.config import load_config

    cfg = load_config("baseline", "micro", {"dataset": "phoenix14t", "data_dir": str(write_phoenix(tmp_path)),
                                            "split_mode": "official"})
    train, val, stats = build_datasets(cfg)
    assert (len(train), len(val)) == (3, 2)
    clip, caption, signer = train[0]
    assert clip.shape == (3, cfg.num_frames, cfg.image_size, cfg.image_size)


# ------------------------------------------------------------------------------------------------ How2Sign
# (split, VIDEO_ID, VIDEO_NAME, SENTENCE_NAME, start, end, sentence, kind): kind "clip" writes the sentence clip,
# "raw" only the raw video (cut by the times), "none" nothing.
HOW2SIGN_ROWS = [
    ("train", "--7E2sU6zP4", "--7E2sU6zP4-5-rgb_front", "--7E2sU6zP4_10-5-rgb_front", 1.0, 2.5, "And I call them decorative elements.", "clip"),
    ("train", "--7E2sU6zP4", "--7E2sU6zP4-5-rgb_front", "--7E2sU6zP4_11-5-rgb_front", 2.5, 4.0, "Because they're not really necessary.", "clip"),
    ("train", "-0Hpz0cBmYY", "-0Hpz0cBmYY-8-rgb_front", "-0Hpz0cBmYY_1-8-rgb_front", 0.0, 0.9, "Hi, I'm going to show you.", "raw"),
    ("train", "-0Hpz0cBmYY", "-0Hpz0cBmYY-8-rgb_front", "-0Hpz0cBmYY_2-8-rgb_front", 1.0, 1.9, "This is how you start.", "raw"),
    ("val", "-d5dN54tH2E", "-d5dN54tH2E-1-rgb_front", "-d5dN54tH2E_0-1-rgb_front", 0.2, 1.4, "We're going to learn a knot.", "clip"),
]


def write_how2sign(root: Path, rows=HOW2SIGN_ROWS) -> Path:
    """A How2Sign release: how2sign_realigned_<split>.csv (tab-separated) + nested per-sentence clips and raw videos."""
    for split in sorted({r[0] for r in rows}):
        lines = [HOW2SIGN_HEADER]
        for row_split, vid, vname, sname, start, end, sentence, kind in rows:
            if row_split != split:
                continue
            lines.append(f"{vid}\t{vname}\t{sname[-12:]}\t{sname}\t{start}\t{end}\t{sentence}")
            if kind == "clip":
                clip_dir = root / f"{split}_rgb_front_clips" / "raw_videos"
                clip_dir.mkdir(parents=True, exist_ok=True)
                write_mp4(clip_dir / f"{sname}.mp4", solid_frames([20, 90, 160, 230]))
            elif kind == "raw":
                raw_dir = root / f"{split}_raw_videos" / "raw_videos"
                raw_dir.mkdir(parents=True, exist_ok=True)
                if not (raw_dir / f"{vname}.mp4").exists():  # 2 s at 10 fps: grey 0..19 * 12
                    write_mp4(raw_dir / f"{vname}.mp4", solid_frames([12 * i for i in range(20)]))
        (root / f"how2sign_realigned_{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def how2sign_config(path: Path, **overrides):
    return config(dataset="how2sign", data_dir=str(path), **overrides)


def test_how2sign_clips_raw_cuts_captions_signers_and_official_split(tmp_path):
    train, val, stats = build_datasets(how2sign_config(write_how2sign(tmp_path), split_mode="official"))
    assert (len(train), len(val), stats["num_skipped"]) == (4, 1, 0)
    by_name = {r.id: r for r in train.records}
    first = by_name["--7E2sU6zP4_10-5-rgb_front"]
    assert first.caption == "And I call them decorative elements." and first.signer == "--7E2sU6zP4"
    assert first.video.name == "--7E2sU6zP4_10-5-rgb_front.mp4" and first.start is None
    cut = by_name["-0Hpz0cBmYY_2-8-rgb_front"]
    assert cut.video.name == "-0Hpz0cBmYY-8-rgb_front.mp4" and (cut.start, cut.end) == (1.0, 1.9)
    frames = train.frames(train.records.index(cut))
    greys = [int(f[SIZE // 2, SIZE // 2, 1]) for f in frames]
    assert min(greys) >= 12 * 10 - 8 and max(greys) <= 12 * 19 + 8  # frames from 1.0 s .. 1.9 s only (mpeg4 is lossy)
    early = train.frames(train.records.index(by_name["-0Hpz0cBmYY_1-8-rgb_front"]))
    assert max(int(f[SIZE // 2, SIZE // 2, 1]) for f in early) <= 12 * 9 + 8
    for i in range(len(train)):
        check_item(train[i])


def test_how2sign_data_dir_may_be_one_sentence_file(tmp_path):
    root = write_how2sign(tmp_path)
    train, val, _ = build_datasets(how2sign_config(root / "how2sign_realigned_train.csv", split_mode="random"))
    assert len(train) + len(val) == 4
    _, _, stats = build_datasets(how2sign_config(root, split_mode="signer_disjoint"))
    assert not set(stats["train_signers"]) & set(stats["val_signers"])


def test_how2sign_sentence_file_in_a_sibling_folder_of_its_clips(tmp_path):
    root = write_how2sign(tmp_path / "how2sign")
    nested = root / "text" / "en" / "raw_text" / "re_aligned"  # the clips are in siblings of text/, 4 levels up
    nested.mkdir(parents=True)
    (root / "how2sign_realigned_train.csv").rename(nested / "how2sign_realigned_train.csv")
    records, skipped = read_how2sign(nested / "how2sign_realigned_train.csv")
    assert len(records) == 4 and not skipped
    assert {r.video.parent.parent.name for r in records} == {"train_rgb_front_clips", "train_raw_videos"}


def test_how2sign_missing_and_corrupt_clips_and_bad_times_are_skipped_and_named(tmp_path):
    rows = HOW2SIGN_ROWS + [
        ("train", "ghost", "ghost-1-rgb_front", "ghost_0-1-rgb_front", 0.0, 1.0, "Nobody here.", "none"),
        ("train", "-0Hpz0cBmYY", "-0Hpz0cBmYY-8-rgb_front", "-0Hpz0cBmYY_3-8-rgb_front", 1.5, 1.0, "Backwards.", "raw"),
    ]
    root = write_how2sign(tmp_path, rows)
    (root / "train_rgb_front_clips" / "raw_videos" / "--7E2sU6zP4_11-5-rgb_front.mp4").write_bytes(b"\x00" * 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val, stats = build_datasets(how2sign_config(root, split_mode="official"))
    assert sum(w.category is DataWarning for w in caught) == 3
    reasons = " | ".join(f"{s['path']}: {s['reason']}" for s in stats["skipped_files"])
    assert "neither ghost_0-1-rgb_front.mp4 nor the raw video ghost-1-rgb_front.mp4 found" in reasons
    assert "start 1.5 s is not before end 1.0 s" in reasons
    assert "--7E2sU6zP4_11-5-rgb_front.mp4: cannot decode" in reasons
    assert "how2sign_realigned_train.csv:" in reasons and stats["num_skipped"] == 3 and len(train) == 3


def test_how2sign_prefers_the_realigned_files_and_reads_the_older_start_end_ones_alone(tmp_path):
    root = write_how2sign(tmp_path)
    older = root / "how2sign_train.csv"  # the release's non-realigned file: START/END, same sentences
    text = (root / "how2sign_realigned_train.csv").read_text(encoding="utf-8")
    older.write_text(text.replace("START_REALIGNED\tEND_REALIGNED", "START\tEND"), encoding="utf-8")
    train, val, _ = build_datasets(how2sign_config(root, split_mode="official"))
    assert (len(train), len(val)) == (4, 1)  # not read twice
    alone, rest, _ = build_datasets(how2sign_config(older, split_mode="random", train_ratio=0.5))
    cut = [r for r in alone.records + rest.records if r.start is not None]
    assert sorted((r.start, r.end) for r in cut) == [(0.0, 0.9), (1.0, 1.9)]


def test_how2sign_bad_roots_and_sentence_files_are_errors_naming_them(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(how2sign_config(tmp_path / "nope"))
    (tmp_path / "other.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no How2Sign sentence file"):
        build_datasets(how2sign_config(tmp_path))
    comma = tmp_path / "how2sign_realigned_val.csv"
    comma.write_text(HOW2SIGN_HEADER.replace("\t", ",") + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"how2sign_realigned_val.csv lacks column\(s\)"):
        build_datasets(how2sign_config(comma))
    comma.write_text(HOW2SIGN_HEADER + "\nv\tv-1\t0\tv_0-1\t0\t1\thello\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"no usable clips in .*how2sign_realigned_val.csv.*1 candidate"):
            build_datasets(how2sign_config(comma))


def test_a_cut_late_in_a_long_video_seeks_and_keeps_only_its_seconds(tmp_path):
    video = tmp_path / "raw.mp4"
    write_mp4(video, solid_frames([4 * i for i in range(60)]))  # 6 s at 10 fps, grey 4 * frame index
    cut = load_clip(video, 10, 20, start=4.0, end=4.9)  # 10 frames at the video's own size: no resampling
    assert np.array_equal(cut, read_video(video)[40:50])  # frames 4.0 s .. 4.9 s, as a full decode gives them
    with pytest.raises(UnusableFile, match="no frames between"):
        load_clip(video, 5, SIZE, start=7.0, end=8.0)


def test_cut_clips_are_cached_separately_from_the_whole_video(tmp_path):
    train, _, _ = build_datasets(how2sign_config(write_how2sign(tmp_path), split_mode="official"))
    cuts = [i for i, r in enumerate(train.records) if r.start is not None]
    a, b = (train.frames(i) for i in cuts)
    assert not np.array_equal(a, b) and len(train.cache) >= 2


# ------------------------------------------------------------------------------------------------ the command line
@pytest.mark.usefixtures("one_torch_thread", "no_metric_weights")
@pytest.mark.parametrize("dataset", ["phoenix14t", "how2sign"])
def test_a_release_trains_and_evaluates_from_the_command_line_with_dataset_and_data_dir_alone(tmp_path, dataset,
                                                                                               capsys):
    from t2s import cli
    from t2s.rundir import RunDir

    root = (write_phoenix if dataset == "phoenix14t" else write_how2sign)(tmp_path / "release")
    executed = tmp_path / "executed"
    # the release keys alone; --scale micro and max_steps only keep the test short
    argv = ["run", "--scale", "micro", "--executed-dir", str(executed), "--study", "r", "-p", "max_steps=2",
            "-p", f"dataset={dataset}", "-p", f"data_dir={root}"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    run = RunDir(executed / "r" / "baseline-seed0")
    assert run.status == "finished"
    rows = {row["weights"]: row for row in json.loads((run.logs / "evaluation_metrics.json").read_text())}
    assert set(rows) == {"raw", "ema"}
    assert all(np.isfinite(row["val_loss"]) for row in rows.values())
    # not synthsign: no ground-truth glosses to back-translate, said with the reason
    assert rows["ema"]["bt_bleu4_seen"] is None and rows["ema"]["bt_bleu4_seen_status"]
