"""The command line's `run`: one variant trained and evaluated in this process, leaving the run directory the training
notebook leaves (`--no-eval`: trained only)."""
from __future__ import annotations

import pytest
from runfactory import make_run, run_layout

from t2s import cli
from t2s.study.progress import read_progress

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_metric_weights")


def test_run_leaves_the_notebooks_run_directory_evaluation_included_and_no_eval_trains_only(synth_dir, tmp_path,
                                                                                              capsys):
    executed = tmp_path / "executed"
    common = ["run", "--scale", "micro", "--executed-dir", str(executed), "--study", "s", "-p", f"data_dir={synth_dir}"]
    assert cli.main(common) == 0
    run_dir = executed / "s" / "baseline-seed0"
    assert f"evaluated: {run_dir / 'logs' / 'evaluation_metrics.csv'} and .json" in capsys.readouterr().out
    # the run factory makes what a trained and evaluated run holds (tests/test_evaluate.py checks it against one):
    # config, metadata, summary, logs, samples, evaluation rows and clips, progress
    assert run_layout(run_dir) == run_layout(make_run(tmp_path / "made", "baseline", 0, notebook=False))
    assert read_progress(run_dir).phase == "evaluated"

    assert cli.main([*common, "--variant", "no_ema", "--no-eval", "-p", "max_steps=2"]) == 0
    trained = executed / "s" / "no_ema-seed0"
    assert (trained / "summary.json").is_file() and read_progress(trained).phase == "trained"
    assert not (trained / "logs" / "evaluation_metrics.csv").exists() and not (trained / "evaluation").exists()

    assert cli.main([*common, "--notebook", "--no-eval"]) == 2
    assert "--no-eval: the training notebook always evaluates" in capsys.readouterr().err


def test_an_interrupted_run_exits_non_zero_so_a_batch_script_sees_it(synth_dir, tmp_path, monkeypatch, capsys):
    from t2s.engine.train import RunResult

    calls = []

    def interrupted(cfg, run_dir, progress=False):
        calls.append(run_dir)
        return RunResult(run_dir, {}, "interrupted")

    monkeypatch.setattr("t2s.engine.train.train", interrupted)  # cli imports it when the command runs
    argv = ["run", "--scale", "micro", "--executed-dir", str(tmp_path / "executed"), "-p", f"data_dir={synth_dir}"]
    assert cli.main(argv) == 1
    assert len(calls) == 1 and "interrupted: " in capsys.readouterr().out


def test_help_and_a_bad_argument_answer_before_torch_loads_and_leave_no_folder(tmp_path):
    """The parser, the config and the trackers are checked before torch is imported and before anything is written:
    `--help`, an unknown key, an unknown variant, an uninstalled tracker."""
    code = """
import importlib.util, sys
from t2s import cli
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "wandb" else real(name, *a)
try:
    cli.main(["--help"])
except SystemExit:
    pass
codes = [cli.main(["run", "--executed-dir", sys.argv[1], "-p", "bogus_key=1"]),
         cli.main(["run", "--executed-dir", sys.argv[1], "--variant", "nope"]),
         cli.main(["run", "--executed-dir", sys.argv[1], "-p", "trackers=[tensorboard, wandb]"]),
         cli.main(["ablate", "--executed-dir", sys.argv[1], "-p", "trackers=[wandb]"])]
print(codes, "torch" in sys.modules)
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "executed")], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[2, 2, 2, 2] False", out.stdout + out.stderr
    assert "unknown key 'bogus_key'" in out.stderr and "the wandb package is not installed" in out.stderr
    assert not (tmp_path / "executed").exists()


def test_an_empty_prompt_is_refused(capsys, tmp_path):
    assert cli.main(["generate", str(tmp_path), "thank you", " "]) == 2
    assert "prompt 2 is empty" in capsys.readouterr().err
