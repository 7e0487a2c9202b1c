"""`trackers`: what the report holds reaches TensorBoard (the run's tensorboard/ folder) and, through accelerate,
MLflow (tested with its recommended local store, SQLite, no server), W&B or Aim: the config, the training and
validation scalars, the evaluation metrics of every weight set, the sample and evaluation clips with their index; a
derived run is its own tracker run, marked as derived from its provider. A tracker this machine cannot use is a clear
error before anything is written."""
from __future__ import annotations

import importlib.util

import pytest
from conftest import read_csv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from t2s.config import ConfigError, load_config
from t2s.engine.trackers import accelerate_trackers
from t2s.engine.train import train
from t2s.rundir import RunDir
from t2s.study.derived import evaluate_or_reuse, train_or_derive

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_metric_weights")

STEPS = {"max_steps": 4, "log_every": 2, "num_epochs": 1, "sample_every": 2, "bt_train_frames": 400, "bt_epochs": 2}


def micro(synth_dir, variant="baseline", **over):
    return load_config(variant, "micro", {"data_dir": synth_dir, **STEPS, **over})


def scalars(run_dir) -> dict:
    """{tag: {step: value}} of a run's TensorBoard events."""
    events = EventAccumulator(str(RunDir(run_dir).tensorboard))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_mlflow_holds_what_the_report_holds_and_a_derived_run_is_marked(synth_dir, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is in requirements.txt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the local artifact store lives beside the database
    trackers = {"trackers": ["tensorboard", "mlflow"]}
    base = RunDir(tmp_path / "mystudy" / "baseline-seed0")
    assert train(micro(synth_dir, **trackers), base.root, progress=False).status == "finished"
    rows = {r["weights"]: r for r in evaluate_or_reuse(base.root, progress=False)}
    derived = RunDir(tmp_path / "mystudy" / "no_ema-seed0")
    train_or_derive(micro(synth_dir, "no_ema", **trackers), derived.root, base.root, progress=False)
    evaluate_or_reuse(derived.root, progress=False)

    runs = mlflow.search_runs(experiment_names=["mystudy"], output_format="list")  # the study folder's name
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"baseline-seed0", "no_ema-seed0"}  # one tracker run each: evaluation reopened it
    logged, client = by_name["baseline-seed0"], mlflow.tracking.MlflowClient()
    assert logged.info.run_id == base.read_metadata()["tracker_runs"]["mlflow"] and logged.info.status == "FINISHED"
    assert logged.data.params["learning_rate"] == str(load_config("baseline", "micro").learning_rate)
    history = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "train/loss")}
    csv_losses = {int(r["step"]): float(r["loss"]) for r in read_csv(base.training_csv)}
    assert history == pytest.approx(csv_losses, rel=1e-6) and len(history) == STEPS["max_steps"]
    val = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "val/loss_raw")}
    assert set(val) == {int(r["step"]) for r in read_csv(base.validation_csv)}
    for weights in ("raw", "ema"):  # every weight set's evaluation metrics
        assert logged.data.metrics[f"eval/{weights}/val_loss"] == pytest.approx(rows[weights]["val_loss"])
        assert logged.data.metrics[f"eval/{weights}/ssim"] == pytest.approx(rows[weights]["ssim"])
    files = {f.path for folder in ("evaluation", "samples") for f in client.list_artifacts(logged.info.run_id, folder)}
    assert "evaluation/index.json" in files and "evaluation/ema_000.gif" in files and "evaluation/real_000.gif" in files
    assert "samples/samples.json" in files and any(f.endswith(".gif") for f in files if f.startswith("samples/"))

    mine = by_name["no_ema-seed0"]
    assert mine.data.tags["derived_from"] == "baseline-seed0" and mine.data.params["use_ema"] == "False"
    assert mine.data.metrics["eval/raw/val_loss"] == pytest.approx(rows["raw"]["val_loss"])  # the shared raw row
    shared = {m.step: m.value for m in client.get_metric_history(mine.info.run_id, "train/loss")}
    assert shared == pytest.approx(csv_losses, rel=1e-6)
    tb = scalars(derived.root)  # the derived run appears in TensorBoard too
    assert tb["train/loss"] == pytest.approx(csv_losses, rel=1e-6) and "val/loss_raw" in tb
    assert "eval/raw/val_loss" in tb


def test_without_tensorboard_in_trackers_no_events_are_written(synth_dir, tmp_path):
    run_dir = tmp_path / "study" / "baseline-seed0"
    train(micro(synth_dir, trackers=[]), run_dir, progress=False)
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


def test_mlflows_file_store_needs_its_opt_in(monkeypatch, tmp_path):
    cfg = load_config("baseline", "micro", {"trackers": ["mlflow"]})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match="MLflow's local file store.*MLFLOW_TRACKING_URI=sqlite:///mlflow.db, or opt in "
                                          "with MLFLOW_ALLOW_FILE_STORE=true"):
        accelerate_trackers(cfg)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert accelerate_trackers(cfg) == ["mlflow"]
