"""Train each distinct configuration once (t2s/study/derived.py): which runs share a training, how a study plans them, and
what a derived run directory holds."""
from __future__ import annotations

import pytest
import torch

from t2s.config import load_config
from t2s.engine.checkpoint import load_run_weights
from t2s.engine.train import train
from t2s.rundir import RunDir, read_json
from t2s.study import derived as share  # the derived runs' room
from t2s.study.runs import plan_study


def _config(variant, **overrides):
    return load_config(variant, "micro", {"seed": 0, **overrides})


def test_only_a_variant_without_ema_shares_an_ema_variants_identical_training():
    baseline, no_ema = _config("baseline").to_dict(), _config("no_ema").to_dict()
    assert share.shares_training(no_ema, baseline)
    assert not share.shares_training(baseline, no_ema)  # the EMA variant needs its own EMA
    assert not share.shares_training(_config("text_finetuned").to_dict(), baseline)  # a training key differs
    assert not share.shares_training(_config("no_ema", learning_rate=5e-4).to_dict(), baseline)
    assert not share.shares_training(_config("no_ema", seed=1).to_dict(), baseline)
    # evaluation and sampling settings do not change training
    assert share.shares_training(_config("no_ema", guidance_scale=5.0, eval_num_clips=6).to_dict(), baseline)


def test_a_study_plan_names_the_provider_and_runs_it_first(tmp_path):
    plans = plan_study("s", ["no_ema", "text_finetuned", "baseline"], [0, 1], "micro", {}, tmp_path)
    order = [p.name for p in plans]
    assert order == ["text_finetuned-seed0", "text_finetuned-seed1", "baseline-seed0", "baseline-seed1",
                     "no_ema-seed0", "no_ema-seed1"]
    shared = {p.name: p.parameters["weights_from"] for p in plans}
    assert shared["no_ema-seed0"].endswith("s/baseline-seed0") and shared["no_ema-seed1"].endswith("s/baseline-seed1")
    assert shared["baseline-seed0"] is None and shared["text_finetuned-seed0"] is None
    unshared = plan_study("s", ["no_ema", "baseline"], [0], "micro", {}, tmp_path, share=False)
    assert [p.parameters["weights_from"] for p in unshared] == [None, None]
    # without the EMA variant in the study, no_ema trains itself
    alone = plan_study("s", ["no_ema", "text_finetuned"], [0], "micro", {}, tmp_path)
    assert all(p.parameters["weights_from"] is None for p in alone)


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    cfg = _config("baseline", data_dir=str(root / "data"))
    train(cfg, root / "baseline-seed0", progress=False)
    return root, cfg


def test_a_derived_run_holds_the_providers_raw_weights_and_no_ema(provider):
    root, cfg = provider
    consumer = _config("no_ema", data_dir=str(root / "data"))
    result = share.train_or_derive(consumer, root / "no_ema-seed0", root / "baseline-seed0", progress=False)
    assert result.status == "finished"
    run, source = RunDir(root / "no_ema-seed0"), RunDir(root / "baseline-seed0")
    mine, theirs = load_run_weights(run), load_run_weights(source)
    # both finished: final safetensors weights, no optimizer state (keep_optimizer_state false)
    assert mine["source"] == run.weights_raw and theirs["source"] == source.weights_raw
    assert not run.checkpoints.exists() and not source.checkpoints.exists()
    assert mine["ema"] is None and theirs["ema"] is not None and read_json(run.config, {})["use_ema"] is False
    assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in theirs["model"])
    meta, summary = read_json(run.metadata, {}), read_json(run.summary, {})
    assert meta["status"] == "finished" and meta["weights_from"] == str(source.root)
    assert summary["val_loss_ema"] is None and summary["ema_updates"] is None
    assert summary["val_loss_raw"] == read_json(source.summary, {})["val_loss_raw"]
    assert {e["weights"] for e in read_json(run.samples_json, [])} <= {"raw"}
    # what ablate's live line shows while the notebook goes on to evaluate it: trained, at the provider's last step
    progress = run.read_progress()
    assert (progress["phase"], progress["done"], progress["total"]) == ("trained", summary["steps"], summary["steps"])


def test_a_run_whose_training_differs_trains_itself(provider, capsys):
    root, cfg = provider
    other = _config("no_ema", data_dir=str(root / "data"), learning_rate=5e-4)
    assert "differs in training keys ['learning_rate']" in share.why_not_shared(other, RunDir(root / "baseline-seed0"))
    result = share.train_or_derive(other, root / "no_ema-lr", root / "baseline-seed0", progress=False)
    assert result.status == "finished" and "weights_from" not in read_json(RunDir(root / "no_ema-lr").metadata, {})
    assert "trains itself: it cannot share the training" in capsys.readouterr().out
    assert share.why_not_shared(other, RunDir(root / "absent")).endswith("has not finished")
