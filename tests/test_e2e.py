"""The whole path at micro scale: `ablate` -> papermill train.ipynb per variant -> analysis.ipynb -> HTML + tables."""
from __future__ import annotations

import csv
import json
import re

import pytest

from t2s.study.ablate import run_study

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    overrides = {"data_dir": str(root / "synthsign"), "sample_prompts": ["thank you very much", XSS]}
    result = run_study("micro-e2e", variants=["baseline", "no_ema"], seeds=[0], scale="micro", overrides=overrides,
                       executed_dir=root / "executed", reports_dir=root / "reports")
    return root, result


def test_every_run_finishes_with_its_executed_notebook(study):
    root, result = study
    assert result.ok, [(r.name, r.status, r.error) for r in result.runs]
    for name in ("baseline-seed0", "no_ema-seed0"):
        notebook = root / "executed" / "micro-e2e" / f"{name}.ipynb"
        assert notebook.is_file()
        meta = json.loads((root / "executed" / "micro-e2e" / name / "metadata.json").read_text())
        assert meta["status"] == "finished"
        nb = json.loads(notebook.read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])


def test_the_report_is_self_contained_and_escapes_captions(study):
    root, result = study
    html = (root / "reports" / "micro-e2e.html").read_text(encoding="utf-8")
    assert result.report == root / "reports" / "micro-e2e.html"
    assert not re.search(r"<script[^>]+src=", html), "the report must not load scripts from elsewhere"
    assert str(root) not in html and "/root/" not in html and "/work/" not in html
    assert html.count("Plotly.newPlot") >= 5
    assert "data:image/gif;base64," in html
    assert XSS not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    for heading in ("Comparison", "Findings", "Provenance", "Samples"):
        assert heading in html
    assert "Is EMA important? (no_ema vs baseline)" in html and "Primary metric:" in html


def test_the_comparison_tables_hold_both_variants(study):
    root, _ = study
    table = root / "reports" / "micro-e2e" / "comparison_table.csv"
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    variants = {r["variant"] for r in rows}
    assert variants == {"baseline", "no_ema"}
    val = [r for r in rows if r["metric"] == "val_loss_raw"]
    assert len(val) == 2 and all(float(r["mean"]) > 0 for r in val)
    assert (root / "reports" / "micro-e2e" / "comparison_table.md").read_text().count("|") > 10


def test_a_second_ablate_skips_finished_runs(study):
    root, _ = study
    again = run_study("micro-e2e", variants=["baseline", "no_ema"], seeds=[0], scale="micro",
                      overrides={"data_dir": str(root / "synthsign"), "sample_prompts": ["thank you very much", XSS]},
                      executed_dir=root / "executed", reports_dir=root / "reports", build_report=False)
    assert [r.status for r in again.runs] == ["skipped", "skipped"]


def test_no_ema_shares_the_baselines_training_and_the_tables_equal_an_unshared_study(study, tmp_path):
    root, result = study
    shared = root / "executed" / "micro-e2e"
    meta = json.loads((shared / "no_ema-seed0" / "metadata.json").read_text())
    assert meta["weights_from"].endswith("baseline-seed0") and meta["shared_training"]["differing_keys"] == [
        "compare_to", "description", "primary_metric", "question", "use_ema", "variant"]
    notebook = (shared / "no_ema-seed0.ipynb").read_text()
    assert "shares the training of baseline-seed0" in notebook
    unshared = run_study("micro-e2e", variants=["baseline", "no_ema"], seeds=[0], scale="micro",
                         overrides={"data_dir": str(root / "synthsign"), "sample_prompts": ["thank you very much", XSS]},
                         executed_dir=tmp_path / "executed", reports_dir=tmp_path / "reports", share=False)
    assert unshared.ok
    assert "weights_from" not in json.loads((tmp_path / "executed" / "micro-e2e" / "no_ema-seed0" / "metadata.json")
                                            .read_text())
    costs = {"train_time_hours", "clips_per_s", "peak_memory_gb", "inference_time_ms", "inference_memory_gb"}

    def table(reports):
        with open(reports / "micro-e2e" / "comparison_table.csv", newline="", encoding="utf-8") as fh:
            return {(r["variant"], r["metric"]): r["mean"] for r in csv.DictReader(fh) if r["metric"] not in costs}

    a, b = table(root / "reports"), table(tmp_path / "reports")
    assert a == b and len(a) > 20
