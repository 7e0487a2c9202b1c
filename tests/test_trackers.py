"""`trackers`: the training scalars go to TensorBoard (the run's tensorboard/ folder) and, through accelerate, to
MLflow (tested with MLflow's local file store), W&B or Aim; a tracker whose package is missing is a clear error."""
from __future__ import annotations

import importlib.util

import pytest
from conftest import read_csv

import t2s
from t2s.config import ConfigError, load_config
from t2s.engine.runtime import accelerate_trackers
from t2s.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = {"max_steps": 4, "log_every": 2, "num_epochs": 1, "sample_every": 1000}


def micro(synth_dir, **over):
    return load_config("baseline", "micro", {"data_dir": synth_dir, **STEPS, **over})


def test_mlflow_receives_the_losses_and_the_config_of_a_run(synth_dir, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is in requirements.txt")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's local file store, kept for tests and offline use
    run_dir = tmp_path / "mystudy" / "baseline-seed0"
    result = t2s.train(micro(synth_dir, trackers=["tensorboard", "mlflow"]), run_dir, progress=False)
    assert result.status == "finished"

    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("mystudy")  # the study folder's name
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "baseline-seed0" and logged.info.status == "FINISHED"
    assert logged.data.params["learning_rate"] == str(result_cfg_lr(run_dir))
    history = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "train/loss")}
    csv_losses = {int(r["step"]): float(r["loss"]) for r in read_csv(RunDir(run_dir).training_csv)}
    assert history == pytest.approx(csv_losses, rel=1e-6) and len(history) == STEPS["max_steps"]
    val = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "val/loss_raw")}
    assert set(val) == {int(r["step"]) for r in read_csv(RunDir(run_dir).validation_csv)}
    assert any((run_dir / "tensorboard").iterdir())  # TensorBoard kept beside it


def result_cfg_lr(run_dir):
    import json

    return json.loads((run_dir / "config.json").read_text())["learning_rate"]


def test_without_tensorboard_in_trackers_no_events_are_written(synth_dir, tmp_path):
    run_dir = tmp_path / "study" / "baseline-seed0"
    t2s.train(micro(synth_dir, trackers=[]), run_dir, progress=False)
    assert read_csv(RunDir(run_dir).training_csv)  # the CSVs are the run's record either way
    assert not list((run_dir / "tensorboard").glob("events.*"))


@pytest.mark.parametrize("trackers, message", [
    (["tensorboard", "comet"], "key 'trackers' has value ['tensorboard', 'comet']; expected a list of distinct names"),
    (["mlflow", "mlflow"], "expected a list of distinct names from: tensorboard, mlflow, wandb, aim"),
    ("tensorboard", "key 'trackers' has value 'tensorboard'"),
])
def test_bad_trackers_are_refused_with_the_valid_names(trackers, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("baseline", "micro", {"trackers": trackers})


def test_a_tracker_without_its_package_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = load_config("baseline", "micro", {"trackers": ["tensorboard", "wandb"]})
    with pytest.raises(ConfigError, match=r"lists 'wandb', but the wandb package is not installed: pip install wandb"):
        accelerate_trackers(cfg)
    assert accelerate_trackers(load_config("baseline", "micro")) == []  # tensorboard is the run log's own
