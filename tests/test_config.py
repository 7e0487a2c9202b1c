"""The config: merge order, validation messages that name the key, file and line, and derived values."""
from __future__ import annotations

import json

import pytest
import torch

from t2s.config import Config, ConfigError, from_dict, load_config, load_config_file, parse_override


@pytest.fixture
def params(tmp_path):
    (tmp_path / "scales").mkdir()
    (tmp_path / "scales" / "s.yaml").write_text("batch_size: 3\nlearning_rate: 1.0e-3\nnum_frames: 8\n")
    (tmp_path / "v.yaml").write_text("learning_rate: 2.0e-4\nuse_ema: false\n")
    return tmp_path


def test_merge_order_is_defaults_scale_variant_overrides(params):
    cfg = load_config("v", "s", {"num_frames": 4}, params_dir=params)
    assert cfg.batch_size == 3  # scale
    assert cfg.learning_rate == 2e-4  # variant beats scale
    assert cfg.num_frames == 4  # override beats scale
    assert cfg.use_ema is False and cfg.image_size == Config().image_size  # variant; default
    assert (cfg.variant, cfg.scale) == ("v", "s")


def test_a_primary_metric_per_scale_is_resolved_for_the_scale_loaded(params):
    """A params file may declare the primary metric per scale, fixed before any run; config.json then holds the one
    of the scale it ran at, and a malformed mapping names the key and the expected form."""
    (params / "q.yaml").write_text("compare_to: v\nprimary_metric: {s: dtw_gap_unseen, default: bt_bleu4_unseen}\n")
    (params / "scales" / "other.yaml").write_text("batch_size: 1\n")
    assert load_config("q", "s", params_dir=params).primary_metric == "dtw_gap_unseen"
    assert load_config("q", "other", params_dir=params).primary_metric == "bt_bleu4_unseen"
    (params / "bad.yaml").write_text("primary_metric: {s: 3}\n")
    with pytest.raises(ConfigError, match="bad.yaml: key 'primary_metric' has value .*scale name"):
        load_config("bad", "s", params_dir=params)


def test_a_retired_key_switched_on_is_refused_with_the_reason_and_switched_off_is_ignored(tmp_path):
    """hand_pose (removed: its glove layer painted over the denoiser's output) in an older run's config.json: off
    loads, on is refused naming the key and why."""
    old = {**Config().to_dict(), "hand_pose": False, "hand_pose_pretrain_steps": 0, "hand_pose_lr": None}
    (tmp_path / "off.json").write_text(json.dumps(old))
    assert load_config_file(tmp_path / "off.json").to_dict() == Config().to_dict()
    (tmp_path / "on.json").write_text(json.dumps({**old, "hand_pose": True}))
    with pytest.raises(ConfigError, match="on.json: key 'hand_pose' is no longer supported: the hand-pose stage was "
                                          "removed"):
        load_config_file(tmp_path / "on.json")
    with pytest.raises(ConfigError, match="key 'hand_pose_lr' is no longer supported"):
        load_config("baseline", "micro", {"hand_pose_lr": 0.0})


def test_every_shipped_variant_and_scale_validates():
    for variant in ("baseline", "text_finetuned", "no_ema"):
        for scale in ("micro", "tiny", "small", "full"):
            load_config(variant, scale)
    full = load_config("baseline", "full")
    assert (full.image_size, full.num_frames, full.batch_size, full.gradient_accumulation_steps) == (64, 16, 2, 8)
    assert (full.learning_rate, full.num_epochs, full.ema_decay) == (5e-5, 150, 0.9999)
    assert full.effective_batch_size == 16
    assert load_config("text_finetuned", "tiny").freeze_text_encoder is False
    assert load_config("no_ema", "tiny").use_ema is False


def test_an_unknown_key_names_the_closest_valid_one(params):
    with pytest.raises(ConfigError, match=r"override: unknown key 'learning_rat'; did you mean 'learning_rate'\?"):
        load_config("v", "s", ["learning_rat=1e-4"], params_dir=params)
    (params / "typo.yaml").write_text("use_emma: true\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'use_emma'; did you mean 'use_ema'\?"):
        load_config("typo", "s", params_dir=params)


@pytest.mark.parametrize("override, message", [
    ("batch_size=1.5", r"key 'batch_size' has value 1.5 of type float; expected int"),
    ("use_ema=yes please", r"key 'use_ema' has value 'yes please' of type str; expected bool"),
    ("beta_schedule=cosinus", r"key 'beta_schedule' has value 'cosinus'; allowed values: linear, scaled_linear, cosine"),
    ("ema_decay=1.0", r"key 'ema_decay' has value 1.0; allowed range: \[0.0, 1.0\)"),
    ("cond_drop_prob=-0.1", r"key 'cond_drop_prob' has value -0.1; allowed range: \[0.0, 1.0\]"),
    ("learning_rate=nan", r"key 'learning_rate' has value nan; it must be a finite number"),
    ("text_encoder_trainable_layers=some", r"'text_encoder_trainable_layers' has value 'some'; allowed values: 'all' or a positive integer"),
    ("image_size=30", r"key 'image_size' has value 30; it must be divisible by 2\*\*\(len\(channel_mult\)-1\) = 4"),
    ("prediction_type=epsilon", r"'prediction_type' is 'epsilon' but zero_terminal_snr is true"),
    ("dataset=folder", r"dataset 'folder' needs key 'data_dir'"),
    ("channels_last=sometimes", r"key 'channels_last' has value 'sometimes'; allowed values: auto, true, false"),
    ("mixed_precision=fp8", r"key 'mixed_precision' has value 'fp8'; allowed values: auto, no, fp16, bf16"),
    ("seed=-1", r"key 'seed' has value -1; allowed range: \[0, 4294967295\]"),
])
def test_a_wrong_value_names_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("baseline", "tiny", [override])


def test_overrides_are_read_as_yaml_never_as_code():
    assert parse_override("channel_mult=[1, 2]") == ("channel_mult", [1, 2])
    assert parse_override("learning_rate=3e-4") == ("learning_rate", "3e-4")  # YAML 1.1: a string, coerced later
    assert load_config("baseline", "tiny", ["learning_rate=3e-4"]).learning_rate == 3e-4
    key, value = parse_override("description=__import__('os').system('echo pwned')")
    assert value == "__import__('os').system('echo pwned')"  # just text
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_override("learning_rate")


def test_a_params_file_that_is_not_yaml_names_the_file_and_line(params):
    (params / "broken.yaml").write_text("batch_size: 2\nlearning_rate: [1, 2\nuse_ema: true\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:.*line \d+, column \d+: not valid YAML"):
        load_config("broken", "s", params_dir=params)
    (params / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list.yaml: expected a mapping of key: value"):
        load_config("list", "s", params_dir=params)


def test_an_unknown_variant_or_scale_lists_the_available_ones(params):
    with pytest.raises(ConfigError, match=r"unknown variant 'w' .*available: v"):
        load_config("w", "s", params_dir=params)
    with pytest.raises(ConfigError, match=r"unknown scale 'x' .*available: s"):
        load_config("v", "x", params_dir=params)


def test_the_resolved_config_round_trips_through_json(tmp_path):
    cfg = load_config("text_finetuned", "tiny", {"seed": 3})
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    again = load_config_file(path)
    assert again == cfg and again.run_name == "text_finetuned-seed3"
    assert json.loads(path.read_text())["freeze_text_encoder"] is False
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        from_dict({**cfg.to_dict(), "bogus": 1})


# --- command-line options and -p overrides never silently disagree ----------------------------------------------------

def test_run_takes_the_seed_from_p_and_a_conflicting_option_is_an_error(monkeypatch, tmp_path, capsys):
    from t2s import cli

    trained = []

    def fake_train(cfg, run_dir, progress=True):
        trained.append((cfg.seed, cfg.num_epochs, run_dir))

        class Result:
            status, run_dir = "finished", tmp_path

        return Result()

    monkeypatch.setattr("t2s.engine.train.train", fake_train)  # cli imports it when the command runs
    common = ["--scale", "micro", "--executed-dir", str(tmp_path), "--no-eval"]  # nothing trained to evaluate
    assert cli.main(["run", *common, "-p", "seed=3"]) == 0
    assert trained[-1][0] == 3 and trained[-1][2].name == "baseline-seed3"
    assert cli.main(["run", *common, "--seed", "2"]) == 0 and trained[-1][0] == 2
    assert cli.main(["run", *common]) == 0 and trained[-1][0] == 0  # the default when neither is given
    assert cli.main(["run", *common, "--seed", "2", "-p", "seed=3"]) == 2
    assert "--seed 2 and -p seed=3 disagree: give one of them" in capsys.readouterr().err
    assert cli.main(["run", *common, "--epochs", "4", "-p", "num_epochs=4"]) == 0 and trained[-1][1] == 4
    assert cli.main(["run", *common, "--epochs", "4", "-p", "num_epochs=5"]) == 2
    assert "--epochs 4 and -p num_epochs=5 disagree" in capsys.readouterr().err
    assert len(trained) == 4  # the two conflicts trained nothing


def test_ablate_refuses_a_seed_override(tmp_path, capsys):
    from t2s import cli

    assert cli.main(["ablate", "--executed-dir", str(tmp_path), "-p", "seed=3"]) == 2
    assert "-p seed=3: a study's seeds are given with --seeds" in capsys.readouterr().err


def test_a_report_for_a_study_that_does_not_exist_names_the_ones_that_do(tmp_path, capsys):
    from t2s import cli

    (tmp_path / "quickstart").mkdir()
    assert cli.main(["report", "--study", "quickstrat", "--executed-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no study 'quickstrat'" in err and f"studies in {tmp_path}: quickstart" in err


PARSER_ERRORS = [
    (["ablate", "--seeds", "0", "-1"], "argument --seeds: -1 is not a seed: expected 0 to 4294967295"),
    (["run", "--seed", "5000000000"], "argument --seed: 5000000000 is not a seed"),
    (["generate", "RUN", "hello", "--guidance", "-1"], "argument --guidance: -1.0 must be a finite number of at least 0"),
    (["generate", "RUN", "hello", "--seed", "x"], "argument --seed: 'x' is not a whole number"),
    (["evaluate", "RUN", "--device", "tpu"], "argument --device: 'tpu' is not a device: use cpu, cuda or cuda:N"),
    (["evaluate", "RUN", "--num-clips", "0"], "argument --num-clips: 0 must be at least 1"),
    (["bench", "--device", "gpu"], "argument --device: 'gpu'"),
    (["bench", "--steps", "0"], "argument --steps: 0 must be at least 1"),
    (["bench", "--warmup", "-1"], "argument --warmup: -1 must be at least 0"),
    (["bench", "--race-seconds", "inf"], "argument --race-seconds: inf must be a finite number of at least 0"),
    (["ablate", "--epochs", "0"], "argument --epochs: 0 must be at least 1"),
]


def test_a_device_this_machine_lacks_is_one_line_before_any_work(tmp_path, capsys):
    """--device cuda:7 passes the parser (its form is right) and is refused with one line once the command runs,
    before it reads or writes anything."""
    from t2s import cli

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert cli.main(["evaluate", str(tmp_path / "RUN"), "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err
    assert "error: --device cuda:7: this machine has" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", PARSER_ERRORS)
def test_out_of_range_command_line_values_stop_with_one_line_before_any_work(argv, message, capsys):
    """argparse prints `usage` and one error line naming the option and the value, and exits 2 (no traceback)."""
    from t2s import cli

    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_a_text_key_on_the_command_line_keeps_its_text():
    """`-p mixed_precision=no` (the README's fp32 switch) means the string "no", not YAML 1.1's false; a bool key still
    reads yes/no as booleans."""
    from t2s.config import parse_override

    assert parse_override("mixed_precision=no") == ("mixed_precision", "no")
    assert load_config("baseline", "tiny", dict([parse_override("mixed_precision=no")])).mixed_precision == "no"
    assert parse_override("use_ema=no") == ("use_ema", False)
    assert parse_override("seed=3") == ("seed", 3)
