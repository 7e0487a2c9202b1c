"""The report: statistics, tables and files, partial / empty / failed studies, escaping, and the exported HTML.

Run folders come from tests/runfactory.py (real file formats, made-up numbers); nothing is trained here.
"""
from __future__ import annotations

import html
import json
import math
import re

import nbformat
import numpy as np
import pandas as pd
import pytest
from runfactory import make_run, make_study
from scipy import stats as scipy_stats

from t2s.config import PROJECT_ROOT, load_config
from t2s.report import figures, findings, following, load, pages, samples, stats, tables

XSS = "<img src=x onerror=alert(1)>"


# ----------------------------------------------------------------------------------------------- statistics
def test_mean_ci_is_the_student_t_interval():
    values = [1.0, 1.4, 0.9, 1.3]
    half = scipy_stats.t.ppf(0.975, df=3) * np.std(values, ddof=1) / math.sqrt(4)
    estimate = stats.mean_ci(values)
    assert estimate.n == 4
    assert estimate.mean == pytest.approx(1.15)
    assert estimate.low == pytest.approx(1.15 - half)
    assert estimate.high == pytest.approx(1.15 + half)
    assert stats.format_estimate(estimate) == f"1.15 ± {half:.2g}"


def test_one_seed_gives_a_mean_and_no_interval():
    estimate = stats.mean_ci([0.25])
    assert (estimate.mean, estimate.n, estimate.has_interval) == (0.25, 1, False)
    assert math.isnan(estimate.low) and math.isnan(estimate.high)
    assert stats.format_estimate(estimate) == "0.25 (n=1, no interval)"


def test_missing_values_are_left_out_of_the_mean():
    estimate = stats.mean_ci([1.0, None, float("nan"), 3.0])
    assert (estimate.mean, estimate.n) == (2.0, 2)
    assert stats.format_estimate(stats.mean_ci([None])) == "—"


def test_welch_difference_matches_the_welch_satterthwaite_interval():
    a, b = np.array([0.30, 0.32, 0.31, 0.35]), np.array([0.20, 0.22, 0.19])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    d = stats.welch_difference(a, b)
    assert d.diff == pytest.approx(a.mean() - b.mean())
    assert d.low == pytest.approx(a.mean() - b.mean() - half)
    assert d.high == pytest.approx(a.mean() - b.mean() + half)
    assert d.significant is True
    assert d.p == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert "(Welch, n=4 vs 3); interval excludes zero" in stats.format_difference(d)


def test_an_interval_spanning_zero_is_not_significant():
    d = stats.welch_difference([0.30, 0.40, 0.20], [0.31, 0.25, 0.38])
    assert d.low < 0 < d.high
    assert d.significant is False
    assert stats.format_difference(d).endswith("interval spans zero")


def test_a_single_seed_gives_no_difference_interval():
    d = stats.welch_difference([0.3], [0.2, 0.25])
    assert d.diff == pytest.approx(0.075)
    assert d.significant is None
    assert "one seed gives no interval" in stats.format_difference(d)


def test_variants_are_paired_by_seed_where_both_have_it_and_welch_only_otherwise():
    """A large seed effect shared by both variants hides a steady 0.05 gain from Welch but not from the pairing."""
    seed_effect = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.15}
    noise = {0: 0.004, 1: -0.003, 2: 0.001, 3: -0.002}
    base = {s: 1.0 + e for s, e in seed_effect.items()}
    variant = {s: base[s] - 0.05 + noise[s] for s in base}
    paired = stats.seed_difference(variant, base)
    assert paired.method == "paired" and paired.n_a == 4 and paired.note == ""
    differences = [variant[s] - base[s] for s in sorted(base)]
    expected = scipy_stats.ttest_1samp(differences, 0.0)
    assert (paired.low, paired.high) == pytest.approx(tuple(expected.confidence_interval(0.95)))
    assert paired.p == pytest.approx(expected.pvalue) and paired.significant is True
    unpaired = stats.welch_difference(list(variant.values()), list(base.values()))
    assert unpaired.significant is False  # the same numbers, unpaired: the seed effect swamps the gain
    # a seed only one side has is left out of the pairing, and the test says so
    leftover = stats.seed_difference({**variant, 7: 2.0}, base)
    assert leftover.method == "paired" and leftover.n_a == 4 and leftover.note == "unpaired seed 7 left out"
    # no shared seeds at all: Welch over all values, said so
    apart = stats.seed_difference({0: 1.0, 1: 1.2}, {2: 0.9, 3: 1.0})
    assert apart.method == "Welch" and apart.note == "no shared seeds: unpaired"


def test_holm_adjusts_a_hand_made_family():
    # sorted p: 0.005, 0.01, 0.03, 0.04 (m = 4) -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, float("nan"), 0.01])[1] != stats.holm([0.5, float("nan"), 0.01])[1]  # NaN stays NaN
    assert stats.holm([0.5, float("nan"), 0.01])[::2] == pytest.approx([0.5, 0.02])  # and is not in the family
    assert stats.holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])  # monotone, capped at 1


def test_no_spread_over_the_seeds_is_no_interval_not_certainty():
    same = stats.seed_difference({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})  # +0.5 in both seeds
    assert same.diff == pytest.approx(0.5) and not same.spread
    assert same.significant is None and not same.has_interval
    assert stats.describe_difference(same) == "+0.5 in every seed (no spread over 2 seeds: no interval)"
    # float rounding of equal differences (0.3 - 0.2 vs 0.4 - 0.3) is no spread either
    assert not stats.seed_difference({0: 0.3, 1: 0.4}, {0: 0.2, 1: 0.3}).spread
    constant = stats.mean_ci([0.25, 0.25, 0.25])
    assert not constant.has_interval and stats.format_estimate(constant) == "0.25 (no spread over 3 seeds)"


def test_paired_difference_uses_the_per_run_differences():
    d = stats.paired_difference([1.0, 2.0, 3.5], [0.5, 1.0, 3.0])
    expected = stats.mean_ci([0.5, 1.0, 0.5])
    assert (d.diff, d.low, d.high, d.n_a) == (expected.mean, expected.low, expected.high, 3)


# ----------------------------------------------------------------------------------------------- loading and tables
@pytest.fixture
def two_by_two(tmp_path):
    """baseline and text_finetuned, seeds 0 and 1, with evaluation metrics (FVD unavailable)."""
    executed = make_study(tmp_path, "demo", eval_status={"fvd": "I3D weights not found: set T2S_I3D_WEIGHTS=..."})
    return load.load_study("demo", executed)


def test_load_study_finds_every_run_in_variant_order(two_by_two):
    assert [r.name for r in two_by_two.runs] == ["baseline-seed0", "baseline-seed1", "text_finetuned-seed0",
                                                 "text_finetuned-seed1"]
    assert all(r.finished for r in two_by_two.runs)
    assert not two_by_two.is_partial
    run = two_by_two.runs[0]
    assert run.deployed_weights == "ema"
    assert list(run.training.columns[:3]) == ["epoch", "step", "loss"]
    assert run.samples and run.summary["steps"] == 100


def test_a_resumed_run_keeps_the_latest_row_per_step(tmp_path):
    run_dir = make_run(tmp_path / "executed" / "s", "baseline", 0)
    path = run_dir / "logs" / "training_metrics.csv"
    frame = pd.read_csv(path)
    repeated = frame.tail(3).assign(loss=99.0)  # the steps after the last checkpoint, logged again after resuming
    pd.concat([frame, repeated]).to_csv(path, index=False)
    training = load.load_run(run_dir).training
    assert training["step"].is_unique
    assert (training.tail(3)["loss"] == 99.0).all()


def test_comparison_table_gives_mean_and_interval_per_variant(two_by_two, tmp_path):
    table = tables.comparison_table(two_by_two)
    assert list(table.columns) == ["baseline", "text_finetuned"]
    assert table.loc["seeds (n)", "baseline"] == "2"
    val = [load.evaluation_row(r, "ema")["val_loss"] for r in two_by_two.runs_of("baseline")]
    expected = stats.format_estimate(stats.mean_ci(val)) + " (n=2)"  # each cell shows its own n
    assert table.loc["held-out loss, test part (deployed weights) ↓", "baseline"] == expected
    for row in ["final training loss", "minimum training loss", "training time (h) ↓", "throughput (clips/s) ↑",
                "held-out loss, test part, raw weights ↓", "held-out loss, test part, EMA weights ↓", "LPIPS ↓", "SSIM ↑",
                "hand detection rate ↑"]:
        assert "±" in table.loc[row, "baseline"], row
    for row in ["peak memory (GB) ↓", "parameters (M)"]:  # equal in both seeds
        assert table.loc[row, "baseline"].endswith("(no spread over 2 seeds)"), row
    assert "FVD ↓" not in table.index  # null in every run: listed as unavailable instead
    assert "DTW hand error, shuffled captions (control)" in table.index  # a reference: no arrow
    assert not [row for row in table.index if "num_clips" in row or "num clips" in row]  # a count, not a metric

    paths = tables.write_comparison_table(two_by_two, tmp_path / "reports")
    assert paths["csv"] == tmp_path / "reports" / "demo" / "comparison_table.csv"
    written = pd.read_csv(paths["csv"])
    row = written[(written["variant"] == "baseline") & (written["metric"] == "val_loss")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(val)) and row["n"] == 2
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    markdown = paths["md"].read_text()
    assert "| metric | baseline | text_finetuned |" in markdown
    assert f"| held-out loss, test part (deployed weights) ↓ | {expected} |" in markdown


def test_a_single_seed_is_said_to_give_no_interval_and_no_verdict(tmp_path):
    study = load.load_study("one", make_study(tmp_path, "one", seeds=(0,)))
    table = tables.comparison_table(study)
    assert table.loc["held-out loss, test part (deployed weights) ↓", "baseline"].endswith("(n=1, no interval)")
    encoder = findings.findings(study)[0]
    assert encoder.question.startswith("Does fine-tuning the text encoder help?")
    assert encoder.answer.startswith("One seed: no evidence either way.")
    assert "--seeds 0 1 2" in encoder.answer
    for word in ("better", "worse", "helps", "hurts", "significant"):
        assert word not in encoder.answer, word
    assert set(encoder.table["verdict"]) <= {"one seed: no evidence either way"} | {
        v for v in encoder.table["verdict"] if v.startswith(("descriptive only", "cannot compare"))}


def test_variants_without_ema_are_judged_on_their_raw_weights(tmp_path):
    study = load.load_study("s", make_study(tmp_path, "s", variants=("baseline", "no_ema"), seeds=(0,)))
    values = study.values.set_index("variant")
    no_ema = study.runs_of("no_ema")[0]
    assert no_ema.deployed_weights == "raw"
    assert values.loc["no_ema", "val_loss"] == load.evaluation_row(no_ema, "raw")["val_loss"]
    assert values.loc["baseline", "val_loss"] == load.evaluation_row(study.runs_of("baseline")[0], "ema")["val_loss"]
    assert math.isnan(values.loc["no_ema", "val_loss_ema"])


# ----------------------------------------------------------------------------------------------- findings
def _paired_study(tmp_path, name="paired", seeds=(0, 1, 2)):
    """Three variants whose runs share a seed effect (the factory's +0.02 per seed) plus a little noise of their own:
    text_finetuned 0.05 lower than baseline, no_ema 0.04 higher."""
    study_dir = tmp_path / "executed" / name
    noise = {0: 0.003, 1: -0.002, 2: 0.0005, 3: -0.001}
    for variant, shift in (("baseline", 0.0), ("text_finetuned", -0.05), ("no_ema", 0.04)):
        for seed in seeds:
            make_run(study_dir, variant, seed, loss_shift=shift + (noise[seed] if shift else 0.0))
    return load.load_study(name, tmp_path / "executed")


def test_findings_come_from_the_variant_files_and_are_paired_by_seed(tmp_path):
    encoder, ema, best = findings.findings(_paired_study(tmp_path))
    assert encoder.question == "Does fine-tuning the text encoder help? (text_finetuned vs baseline)"
    # the text encoder is judged on captions never seen in training: at the tiny scale (the factory's runs) by the DTW
    # gap there (params/text_finetuned.yaml: back-translation stays at its floor at tiny); the factory's evaluation
    # numbers move with its loss shift, so the gap (higher is better) is 0.0495 lower
    assert encoder.primary == "text-following gap (DTW), unseen captions (novel + paraphrased)"
    assert encoder.answer.startswith("text_finetuned is worse than baseline on text-following gap (DTW), unseen "
                                     "captions (novel + paraphrased): -0.0495, 95% CI")
    assert "(paired, n=3); the interval excludes zero." in encoder.answer
    primary = encoder.table.iloc[0]
    assert (primary["role"], primary["test"], primary["verdict"]) == ("primary", "paired, n=3",
                                                                      "worse (interval excludes zero)")
    # text following is reported next to the primary metric: back-translation on unseen and seen captions and the DTW
    # gap on all captions
    assert "Text following (exploratory; back-translation BLEU-4, seen captions" in encoder.answer
    assert "Text following (exploratory; back-translation BLEU-4, unseen" in encoder.answer
    assert "Text following (exploratory; text-following gap (DTW, shuffled" in encoder.answer
    assert "Text following (exploratory; text-following gap (DTW), unseen" not in encoder.answer  # it is the primary
    assert ema.question == "Is EMA important? (no_ema vs baseline)"
    assert ema.answer.startswith("no_ema is worse than baseline on held-out loss, test part (deployed weights)")
    # EMA vs raw inside the baseline runs: the factory's EMA is 0.01 lower in every seed, so no interval, no verdict
    assert "Within baseline runs (its own comparison, not the question's): No verdict: held-out loss, test part (EMA " \
           "weights − raw weights) is -0.01 in every one of 3 seeds" in ema.answer
    within = ema.table[ema.table["comparison"] == "EMA − raw weights, baseline runs"]
    assert list(within["role"])[0] == "within-run" and "primary" not in set(within["role"])
    assert list(ema.table["role"]).count("primary") == 1
    assert "Lowest mean held-out loss, test part (deployed weights): text_finetuned" in best.answer
    # the best is tested against every other variant, Holm-adjusted over those comparisons: against no_ema the
    # factory's difference is the same in every seed (no interval), so the ranking is by means only
    assert "The ranking is by means only: text_finetuned is not clearly better than no_ema (Holm over the 2 " \
           "comparisons with text_finetuned" in best.answer
    assert list(best.table["variant"]) == ["text_finetuned", "baseline", "no_ema"]
    assert list(best.table["seeds (n)"]) == [3, 3, 3]
    assert best.table.iloc[1]["p (Holm over the 2 comparisons with text_finetuned)"] != "—"


def test_the_best_configuration_is_claimed_only_after_holm_over_every_comparison_with_it(tmp_path):
    study_dir = tmp_path / "executed" / "best"
    noise = {0: 0.003, 1: -0.002, 2: 0.0005}
    for variant, shift, scale in (("baseline", 0.0, 0.0), ("text_finetuned", -0.05, 1.0), ("no_ema", 0.04, -1.0)):
        for seed in (0, 1, 2):
            make_run(study_dir, variant, seed, loss_shift=shift + scale * noise[seed])
    best = findings.findings(load.load_study("best", tmp_path / "executed"))[2]
    assert "text_finetuned is better than each of the other 2 variants (Holm-adjusted p < 0.05 over the 2 " \
           "comparisons with it)" in best.answer
    p = [float(v) for v in best.table["p (Holm over the 2 comparisons with text_finetuned)"][1:]]
    assert max(p) < stats.ALPHA


def test_text_following_sentences_read_the_holm_adjusted_p_values(tmp_path):
    """The sentence is written after Holm's adjustment: it says what the table's verdict says (it used to be built
    before the adjustment, from NaN p-values, and always read "no clear difference after Holm")."""
    encoder = findings.findings(_paired_study(tmp_path))[0]
    rows = encoder.table.set_index("metric")
    seen = rows.loc[next(m for m in rows.index if m.startswith("back-translation BLEU-4, seen"))]
    assert seen["verdict"].endswith(f"(Holm-adjusted p < {stats.ALPHA:g})")  # the factory's consistent shift
    sentence = encoder.answer.split("Text following (exploratory; back-translation BLEU-4, seen")[1].split(" Text ")[0]
    assert sentence.rstrip(".").endswith(seen["verdict"])
    assert "no clear difference after Holm" not in sentence


def test_a_power_line_says_what_no_clear_difference_cannot_exclude(tmp_path):
    """Each answer with an interval says the smallest difference its seeds would detect at 80% power; the number is
    the noncentral-t power of the same test (checked by simulation)."""
    import numpy as np
    from scipy import stats as scipy_stats

    encoder = findings.findings(_paired_study(tmp_path))[0]
    assert "Power: with 3 seeds and the spread observed, a true difference in text-following gap (DTW), unseen " \
           "captions" in encoder.answer and "“no clear difference” is not “no difference”" in encoder.answer
    a, b = [1.0, 1.2, 1.1, 1.3, 1.0], [0.9, 1.0, 1.0, 1.25, 0.95]
    d = stats.paired_difference(a, b)
    smallest = stats.detectable_difference(d)
    sd = np.std(np.subtract(a, b), ddof=1)
    draws = np.random.default_rng(0).normal(smallest, sd, size=(20000, 5))
    rate = (scipy_stats.ttest_1samp(draws, 0, axis=1).pvalue < stats.ALPHA).mean()
    assert rate == pytest.approx(stats.POWER, abs=0.015)
    two = stats.paired_difference([1.0, 1.2], [0.9, 1.0])  # two seeds: df = 1, a wide detectable difference
    assert stats.detectable_difference(two) > 5 * abs(two.diff)
    assert math.isnan(stats.detectable_difference(stats.paired_difference([1.0], [0.9])))


def test_other_metrics_are_exploratory_holm_adjusted_or_descriptive(tmp_path):
    study = _paired_study(tmp_path)
    encoder = findings.findings(study)[0]
    rows = encoder.table.set_index("metric")
    assert rows.loc["final training loss", "role"] == "descriptive"
    assert rows.loc["final training loss", "verdict"].startswith("descriptive only (the loss of a single mini-batch")
    assert rows.loc["LPIPS ↓", "role"] == "descriptive"  # signer-disjoint split: a signer the model never saw
    assert "appearance mismatch" in rows.loc["LPIPS ↓", "verdict"]
    exploratory = encoder.table[encoder.table["role"] == "exploratory"]
    with_p = exploratory[exploratory["p (Holm within the question)"] != "—"]
    assert len(with_p) == len(encoder.family) >= 2
    values = study.values.set_index(["variant", "seed"])["val_loss_raw"]
    raw = stats.seed_difference(values["text_finetuned"].to_dict(), values["baseline"].to_dict())
    shown = float(rows.loc["held-out loss, test part, raw weights ↓", "p (Holm within the question)"])
    assert raw.p < shown <= 1.0  # adjusted upwards within the family
    shown = float(rows.loc["held-out loss, test part (deployed weights) ↓", "p (Holm within the question)"])
    by_label = {m.label: m.key for m in load.available_metrics(study)}
    table = study.values.set_index(["variant", "seed"])
    family_keys = [by_label[label.split(": ", 1)[1]] for label in encoder.family]
    assert family_keys[0] == "val_loss" and "dtw_gap_unseen" not in family_keys  # the primary is not in the family
    assert "val_loss_raw" in family_keys and "bt_bleu4_seen" in family_keys and "bt_wer_seen" not in family_keys
    assert rows.loc["back-translation WER, seen captions ↓", "role"] == "descriptive"
    unadjusted = [stats.seed_difference(table[key]["text_finetuned"].to_dict(), table[key]["baseline"].to_dict()).p
                  for key in family_keys]
    assert shown == pytest.approx(stats.holm(unadjusted)[0], rel=1e-2)
    page = findings.findings_html(study)
    assert "Holm family:" in page and "Primary metric:" in page
    assert "replicates differ only in the training seed (seeds 0, 1, 2" in page
    assert "split_mode signer_disjoint" in page and "sampling noise" in page


@pytest.mark.parametrize("mode", ["random", "official"])  # official: PHOENIX/How2Sign dev shares signers with train
def test_pixel_metrics_enter_the_exploratory_family_under_a_random_split(tmp_path, mode):
    study = _paired_study(tmp_path)
    for run in study.runs:
        config = json.loads((run.folder / "config.json").read_text())
        (run.folder / "config.json").write_text(json.dumps({**config, "split_mode": mode}))
    rows = findings.findings(load.load_study("paired", tmp_path / "executed"))[0].table.set_index("metric")
    assert rows.loc["LPIPS ↓", "role"] == "exploratory"


def test_a_user_variant_file_with_compare_to_gets_its_finding(tmp_path):
    """params/<name>.yaml with compare_to and a question: the finding appears with no code change."""
    import shutil

    from t2s.config import PARAMS_DIR, load_config

    params = tmp_path / "params"
    shutil.copytree(PARAMS_DIR, params)
    (params / "wide_lr.yaml").write_text(
        'description: "A higher learning rate"\nlearning_rate: 2.0e-3\ncompare_to: baseline\n'
        'question: "Does a higher learning rate help?"\n', encoding="utf-8")
    study_dir = tmp_path / "executed" / "mine"
    for seed in (0, 1):
        make_run(study_dir, "baseline", seed)
        run_dir = make_run(study_dir, "wide_lr", seed, loss_shift=0.02 + 0.001 * seed)
        config = load_config("wide_lr", "tiny", {"seed": seed}, params_dir=params).to_dict()  # what training writes
        (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    finding = findings.findings(load.load_study("mine", tmp_path / "executed"))[0]
    assert finding.question == "Does a higher learning rate help? (wide_lr vs baseline)"
    assert finding.answer.startswith("wide_lr is worse than baseline on held-out loss, test part (deployed weights)")


def test_an_unknown_primary_metric_is_named_with_the_valid_ones(tmp_path):
    study_dir = tmp_path / "executed" / "typo"
    make_run(study_dir, "baseline", 0)
    run_dir = make_run(study_dir, "text_finetuned", 0)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "primary_metric": "val_los"}))
    finding = findings.findings(load.load_study("typo", tmp_path / "executed"))[0]
    assert finding.answer.startswith("Cannot answer: the primary metric 'val_los' declared in "
                                     "text_finetuned-seed0/config.json has no value in this study; metrics with "
                                     "values: ")
    assert "val_loss, " in finding.answer


def test_a_missing_row_is_missing_not_another_weight_set(tmp_path):
    """The deployed (EMA) row gone from evaluation_metrics.csv: NaN with the reason, never the raw weights' numbers in
    their place."""
    run_dir = make_run(tmp_path / "executed" / "gap", "baseline", 0)
    evaluation = pd.read_csv(run_dir / "logs" / "evaluation_metrics.csv")
    evaluation[evaluation["weights"] == "raw"].to_csv(run_dir / "logs" / "evaluation_metrics.csv", index=False)
    study = load.load_study("gap", tmp_path / "executed")
    values = study.values.iloc[0]
    assert math.isnan(values["val_loss"]) and math.isnan(values["lpips"]) and math.isnan(values["val_loss_ema"])
    assert values["val_loss_raw"] == evaluation[evaluation["weights"] == "raw"]["val_loss"].iloc[0]
    reasons = pages.unavailable_metrics(study).set_index("metric")["reason"]
    assert reasons["(all evaluation metrics)"] == "logs/evaluation_metrics.csv has no row for the deployed ema weights"
    assert load.evaluation_row(study.runs[0], "ema") == {}


def test_findings_without_a_variant_say_they_cannot_answer(tmp_path):
    executed = make_study(tmp_path, "half", variants=("baseline", "text_finetuned", "no_ema"), seeds=(0,))
    for path in (executed / "half").glob("no_ema-seed0*"):
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    encoder, ema, best = findings.findings(load.load_study("half", executed))
    assert ema.answer == "Cannot answer: no finished run of no_ema."
    assert {"comparison", "metric", "role", "difference", "95% interval", "test", "verdict"} <= set(encoder.table)


def test_a_metric_missing_on_both_sides_is_called_unavailable_not_nan(tmp_path):
    """DTW computed for no_ema only: baseline vs text_finetuned cannot compare it, and says so instead of '+nan'."""
    study_dir = tmp_path / "executed" / "mixed"
    for variant in ("baseline", "text_finetuned", "no_ema"):
        missing = {} if variant == "no_ema" else {"dtw_error": "no hands found in the generated clips"}
        make_run(study_dir, variant, 0, eval_status=missing)
    study = load.load_study("mixed", tmp_path / "executed")
    encoder, ema, _ = findings.findings(study)
    dtw = [m.title for m in load.available_metrics(study) if m.key == "dtw_error"]
    assert dtw, "the factory's DTW metric should be available in the no_ema run"
    row = encoder.table.set_index("metric").loc[dtw[0]]
    assert row["difference"] == "unavailable" and row["95% interval"] == "—"
    assert row["verdict"] == "cannot compare: unavailable on both sides (see the unavailable metrics)"
    one_sided = ema.table[(ema.table["comparison"] == "no_ema − baseline") & (ema.table["metric"] == dtw[0])].iloc[0]
    assert one_sided["verdict"] == "cannot compare: no values for baseline (see the unavailable metrics)"
    page = findings.findings_html(study)
    assert "nan" not in page.replace("nanoGPT", "")


def test_the_answers_come_first_and_the_scope_names_every_way_the_scale_differs_from_the_reference(tmp_path):
    """The report's first section states each question's answer and its scope: the test part it was scored on, and
    the tiny scale's every difference from the reference scale, so a tiny finding is not read as a reference one."""
    study = _paired_study(tmp_path)
    page = findings.answers_html(study)
    for finding in findings.findings(study):
        assert html.escape(finding.question) in page
    assert "no_ema is worse than baseline on held-out loss, test part (deployed weights)" in page
    assert "scored on the test part of the held-out clips (signer07 and their captions)" in page
    grouped = findings.scale_differences(load_config("baseline", "tiny").to_dict(),
                                         load_config("baseline", "full").to_dict())
    differences = [words for group in grouped.values() for words in group]
    for words in ("32×32 clips of 8 frames (reference: 64×64 of 16)", "x0-prediction (reference: v-prediction)",
                  "the cosine noise schedule (reference: linear)", "text layout maps (4 channels) (reference: none)",
                  "a motion-weighted loss (weight 3; reference: 0)", "DDIM eta 1 (reference: 0)"):
        assert words in differences, words
        assert html.escape(words) in page, words
    assert f"differs from the reference scale (full) in {len(differences)} settings" in page
    assert "not findings about the reference model" in findings.findings_html(study)
    assert list(grouped)[:3] == ["clips and data", "denoiser", "diffusion"]
    assert findings.scale_differences(load_config("baseline", "full").to_dict(),
                                      load_config("baseline", "full").to_dict()) == {}


# ----------------------------------------------------------------------------------------------- partial, empty, failed
def test_a_partial_study_is_said_so(tmp_path):
    executed = make_study(tmp_path, "part", variants=("baseline", "text_finetuned", "no_ema"), seeds=(0,))
    for path in (executed / "part").glob("no_ema-seed0*"):
        path.rename(path.with_name("gone-" + path.name)) if path.is_file() else __import__("shutil").rmtree(path)
    study = load.load_study("part", executed)
    assert study.is_partial and study.missing == ["no_ema-seed0"]
    overview = pages.overview_html(study, tmp_path / "reports")
    assert "This is a partial study" in overview
    assert "Variant no_ema has no finished run." in overview
    assert "Runs not started (no folder, no notebook): no_ema-seed0." in overview
    assert "partial study" in findings.findings_html(study)


@pytest.mark.parametrize("make_folder", [False, True])
def test_an_empty_study_gives_a_report_that_says_so(tmp_path, make_folder):
    if make_folder:
        (tmp_path / "executed" / "empty").mkdir(parents=True)
    study = load.load_study("empty", tmp_path / "executed")
    assert study.runs == [] and study.finished_runs == []
    assert "No finished run" in pages.overview_html(study, tmp_path / "reports")
    assert tables.comparison_table(study) is None
    assert tables.write_comparison_table(study, tmp_path / "reports") == {}
    for figure in (figures.loss_figure, figures.validation_figure, figures.schedule_figure, figures.memory_figure,
                   figures.throughput_figure, figures.metric_bars_figure, figures.change_figure, samples.samples_html):
        assert figure(study) is None
    assert "nothing to conclude" in findings.findings_html(study)
    pages.provenance_html(study, tmp_path / "reports")


def test_a_failed_run_is_listed_with_its_notebook(tmp_path):
    executed = make_study(tmp_path, "f", variants=("baseline",), seeds=(0,))
    make_run(executed / "f", "no_ema", 0, status="failed", error="RuntimeError: CUDA out of memory")
    # a run whose notebook failed before train() wrote anything: only failures.json and the notebook know
    (executed / "f" / "text_finetuned-seed0.ipynb").write_text("{}")
    (executed / "f" / "failures.json").write_text(json.dumps({"text_finetuned-seed0": {
        "ename": "ImportError", "evalue": "no module named t2s.train", "traceback": "..."}}))
    study = load.load_study("f", executed)
    status = {r.name: r.status for r in study.runs}
    assert status == {"baseline-seed0": "finished", "text_finetuned-seed0": "failed", "no_ema-seed0": "failed"}
    overview = pages.overview_html(study, tmp_path / "reports")
    assert "Run no_ema-seed0: failed (../executed/f/no_ema-seed0.ipynb): RuntimeError: CUDA out of memory" in overview
    assert ("Run text_finetuned-seed0: failed (../executed/f/text_finetuned-seed0.ipynb): ImportError: no module "
            "named t2s.train") in overview
    assert "partial study" in overview


def test_an_unreadable_file_is_reported_not_raised(tmp_path):
    executed = make_study(tmp_path, "u", variants=("baseline",), seeds=(0, 1))
    (executed / "u" / "baseline-seed1" / "summary.json").write_text('{"steps": 10, "final_lo')  # cut off mid-write
    (executed / "u" / "baseline-seed0" / "samples" / "samples.json").write_text('{"not": "a list"}')
    study = load.load_study("u", executed)
    overview = pages.overview_html(study, tmp_path / "reports")
    assert "Could not read a file of baseline-seed1: summary.json: unreadable" in overview
    assert "Could not read a file of baseline-seed0: samples.json: expected a JSON list, found dict" in overview
    assert study.values.set_index("run").loc["baseline-seed0", "final_loss"] > 0
    assert math.isnan(study.values.set_index("run").loc["baseline-seed1", "final_loss"])


# ----------------------------------------------------------------------------------------------- figures, samples, provenance
def test_loss_figure_has_a_line_and_a_seed_band_per_variant(two_by_two):
    fig = figures.loss_figure(two_by_two)
    lines = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in lines] == ["baseline (n=2)", "text_finetuned (n=2)"]
    assert sum(t.fill == "tonexty" for t in fig.data) == 2
    smoothed = figures.smooth(two_by_two.runs[0].training.set_index("step")["loss"], 0.6)
    assert len(lines[0].y) == len(smoothed)


def test_every_figure_is_built_from_the_factory_study(two_by_two):
    for build in (figures.validation_figure, figures.schedule_figure, figures.memory_figure, figures.throughput_figure,
                  figures.metric_bars_figure, figures.change_figure):
        fig = build(two_by_two)
        assert fig is not None and fig.data, build.__name__
    change = figures.change_vs_baseline(two_by_two)
    val = change[change["metric"] == "val_loss"].iloc[0]
    values = two_by_two.values.groupby("variant")["val_loss"].mean()
    assert val["percent"] == pytest.approx((values["text_finetuned"] - values["baseline"]) / values["baseline"] * 100)


def test_the_change_axis_fits_the_bars_not_a_near_zero_metrics_interval():
    import pandas as pd

    from t2s.report.figures import change_axis_reach

    rows = [("val_loss", -4.0, -9.0, 1.0), ("bleu", 12.0, -5.0, 30.0), ("gap", 8.0, 2.0, 14.0),
            ("wer", -3.0, -6.0, 0.0), ("ssim", 20.0, -200.0, 240.0)]  # ssim's baseline mean is near 0: +-200%
    change = pd.DataFrame([{"variant": "v", "metric": m, "label": m, "better": "", "percent": p, "low": lo, "high": hi,
                            "difference": ""} for m, p, lo, hi in rows])
    reach = change_axis_reach(change)
    assert 20.0 < reach < 200.0  # every bar inside, the +-200% interval cut
    ends = sorted(abs(v) for _, _, lo, hi in rows for v in (lo, hi))  # 0 1 2 5 6 9 14 30 200 240
    assert reach == pytest.approx(1.15 * (ends[6] + 0.75 * (ends[7] - ends[6])))  # their 75th percentile + 15%
    assert change_axis_reach(change.assign(low=0.5, high=1.0, percent=0.7)) == 5.0  # at least +-5%


def test_the_change_figure_says_when_its_axis_cuts_an_error_bar(two_by_two):
    fig = figures.change_figure(two_by_two)
    change = figures.change_vs_baseline(two_by_two)
    reach = fig.layout.xaxis.range[1]
    assert list(fig.layout.xaxis.range) == [-reach, reach] and fig.layout.xaxis.title.text == "percent change of the mean"
    assert (change["percent"].abs() <= reach).all()
    cut = ((change["low"] < -reach) | (change["high"] > reach)).any()
    assert ("axis cut at" in fig.layout.title.text) == bool(cut)


def test_sample_captions_are_escaped(tmp_path):
    executed = make_study(tmp_path, "x", seeds=(0,), prompts=(XSS, "thank you"))
    study = load.load_study("x", executed)
    for page in (samples.samples_html(study), samples.run_samples_html(study.runs[0])):
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
        assert XSS not in page
        assert page.count("data:image/gif;base64,") >= 2


def test_a_variant_without_training_samples_says_why_in_the_samples_grid(tmp_path):
    import json
    import shutil

    executed = make_study(tmp_path, "x", variants=("baseline", "no_ema", "text_finetuned"), seeds=(0,))
    derived, plain = executed / "x" / "no_ema-seed0", executed / "x" / "text_finetuned-seed0"
    for run in (derived, plain):
        shutil.rmtree(run / "samples")  # no samples.json and no sample GIFs
    meta = json.loads((derived / "metadata.json").read_text())
    meta["shared_training"] = {"from": "baseline-seed0<b>", "checkpoint": "x", "step": 5, "differing_keys": ["use_ema"]}
    (derived / "metadata.json").write_text(json.dumps(meta))
    page = samples.samples_html(load.load_study("x", executed))
    rows = page.split("<tr>")[2:]  # one per prompt, after the head
    assert rows and all("data:image/gif;base64," in row for row in rows)  # the baseline's samples
    assert all("its weights are baseline-seed0&lt;b&gt;'s raw weights (shared training)" in row for row in rows)
    assert all("no training samples in this run" in row for row in rows)  # text_finetuned: none, no known reason
    assert "<b>" not in page


def test_evaluation_clips_show_the_real_clip_beside_each_variant_with_readings_escaped(tmp_path):
    executed = make_study(tmp_path, "x", seeds=(0,), prompts=(XSS, "thank you very much"))
    page = samples.evaluation_samples_html(load.load_study("x", executed))
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<th>real clip<br>" in page and "<th>baseline<br>" in page and "<th>text_finetuned<br>" in page
    # per caption: the real clip and each variant's deployed (EMA) clip, each with the recognizer's reading
    assert page.count("data:image/gif;base64,") == 2 * 3
    assert "reads: thank you very much" in page and "reads: thank you</figcaption>" in page
    assert "<b>seen</b>" in page and "<b>novel</b>" in page


def test_following_checks_each_run_against_the_thresholds(tmp_path):
    study_dir = tmp_path / "executed" / "f"
    run = make_run(study_dir, "baseline", 0)
    frame = pd.read_csv(run / "logs" / "evaluation_metrics.csv")
    good = {"bt_bleu4_seen": 40.0, "bt_bleu4_seen_low": 30.0, "bt_bleu4_seen_high": 50.0, "bt_bleu4_seen_ceiling": 70.0,
            "bt_bleu4_seen_floor": 2.0, "dtw_gap": 0.1, "dtw_gap_low": 0.05, "dtw_gap_high": 0.15,
            "dtw_error_shuffled": 0.3, "hand_detection_rate": 0.9, "caption_dependence": 4.0, "val_loss": 0.12,
            "val_loss_other_caption": 0.125}
    for key, value in good.items():
        frame[key] = value
    frame.loc[frame["weights"] == "ema", "bt_bleu4_seen_low"] = 1.0  # the deployed row: interval reaches the floor
    frame.loc[frame["weights"] == "ema", "hand_detection_rate"] = None
    frame.to_csv(run / "logs" / "evaluation_metrics.csv", index=False)
    table = following.following_table(load.load_study("f", tmp_path / "executed"))
    row = table.iloc[0]
    checks = [c.name for c in following.CHECKS]
    assert (row["run"], row["weights"]) == ("baseline-seed0", "ema")
    # BLEU-4 40.0 is above half the ceiling (35), but its interval [1.0, 50.0] reaches below it: undecided, not met
    assert row[checks[0]].startswith("undecided: BLEU-4 40.0 [1.0, 50.0]; floor 2.0, ceiling 70.0; n = ")
    assert row[checks[0]].endswith("clips (the interval straddles the threshold)")
    assert row[checks[1]].startswith("undecided: gap 0.100 [0.050, 0.150] = 33% of 0.300; n = ")  # 0.05 < 25% of 0.3
    assert row[checks[2]] == "not measured: hand_detection_rate"
    assert row[following.DEPENDENCE] == "4.00% of the held-out loss (0.1200 with its caption, 0.1250 with another clip's)"
    # read from the interval, not the point estimate, with the clip count
    verdict = following.check_verdict
    dtw, detection = following.CHECKS[1], following.CHECKS[2]
    base = {"dtw_gap": 0.1, "dtw_error_shuffled": 0.3, "dtw_clips": 20}
    assert verdict({**base, "dtw_gap_low": 0.08, "dtw_gap_high": 0.12}, dtw).startswith("met: ")
    assert verdict({**base, "dtw_gap_low": 0.08, "dtw_gap_high": 0.12}, dtw).endswith("; n = 20 clips")
    assert verdict({**base, "dtw_gap_low": 0.01, "dtw_gap_high": 0.07}, dtw).startswith("NOT met: ")
    assert verdict({**base, "dtw_gap": 0.02, "dtw_gap_low": -0.01, "dtw_gap_high": 0.05}, dtw).startswith("NOT met: ")
    rate = {"hand_detection_rate": 0.85, "num_clips": 20}
    assert verdict({**rate, "hand_detection_rate_low": 0.81, "hand_detection_rate_high": 0.9}, detection).startswith("met")
    assert verdict({**rate, "hand_detection_rate_low": 0.7, "hand_detection_rate_high": 0.9}, detection).startswith(
        "undecided")
    assert verdict({**rate, "hand_detection_rate": 0.7, "hand_detection_rate_low": 0.6, "hand_detection_rate_high": 0.79},
                   detection).startswith("NOT met")


def test_back_translation_figure_marks_floor_and_ceiling(two_by_two):
    fig = following.back_translation_figure(two_by_two)
    names = [trace.name for trace in fig.data]
    assert names == ["baseline", "text_finetuned", "ceiling", "floor"]
    assert list(fig.data[0].x[:4]) == ["unseen", "novel", "paraphrase", "seen"]


def test_unavailable_metrics_give_their_reason(two_by_two):
    table = pages.unavailable_metrics(two_by_two)
    assert table.to_dict("records") == [{
        "metric": "fvd", "weights": "ema, raw", "reason": "I3D weights not found: set T2S_I3D_WEIGHTS=...",
        "runs": "baseline-seed0, baseline-seed1, text_finetuned-seed0, text_finetuned-seed1"}]


def test_provenance_shows_config_differences_and_relative_links(two_by_two, tmp_path):
    differences = pages.config_differences(two_by_two)
    assert differences.to_dict("records") == [
        {"variant": "text_finetuned", "key": "freeze_text_encoder", "baseline value": "True", "value": "False"}]
    page = pages.provenance_html(two_by_two, tmp_path / "reports")
    assert 'href="../executed/demo/baseline-seed0.ipynb"' in page
    assert "abc1234" in page and "I3D weights not found" in page
    assert str(tmp_path) not in page


# ----------------------------------------------------------------------------------------------- the analysis notebook
def _run_cells_in_process(path, parameters: dict) -> dict:
    """Execute a notebook's code cells here (no kernel), parameters cell replaced: a quick top-to-bottom check."""
    nb = nbformat.read(str(path), as_version=4)
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if "parameters" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
            namespace.update(parameters)
            continue
        exec(cell.source, namespace)
    return namespace


@pytest.mark.parametrize("kind", ["empty", "partial"])
def test_analysis_notebook_runs_top_to_bottom_on_odd_studies(tmp_path, monkeypatch, kind, capsys):
    monkeypatch.chdir(tmp_path)  # the notebook chdirs to the project root; monkeypatch restores ours
    executed = tmp_path / "executed"
    if kind == "partial":
        make_study(tmp_path, "odd", variants=("baseline",), seeds=(0,))
        (executed / "odd" / "study.json").write_text(json.dumps({"variants": ["baseline", "no_ema"], "seeds": [0]}))
    namespace = _run_cells_in_process(PROJECT_ROOT / "notebooks" / "analysis.ipynb",
                                      {"study": "odd", "executed_dir": str(executed), "reports_dir": str(tmp_path / "r")})
    assert namespace["results"].name == "odd"
    shown = capsys.readouterr().out
    assert "Traceback" not in shown
    assert (tmp_path / "r" / "odd" / "comparison_table.md").exists() == (kind == "partial")


def test_exported_report_is_self_contained_and_escaped(tmp_path):
    """The expensive one: papermill runs notebooks/analysis.ipynb in a kernel, nbconvert exports it."""
    from t2s.study.export import build_report

    executed = make_study(tmp_path, "demo", variants=("baseline", "text_finetuned", "no_ema"), seeds=(0, 1),
                          prompts=(XSS, "thank you"), eval_status={"fvd": "I3D weights not found"})
    make_run(executed / "demo", "no_ema", 2, status="failed", error="ValueError: boom")
    html_path = build_report("demo", executed, tmp_path / "reports", log=lambda line: None)

    assert html_path == tmp_path / "reports" / "demo.html"
    page = html_path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", page), "every script must be inline (offline)"
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']https?:", page)
    for absolute in ("/work/", "/root/", str(tmp_path), str(PROJECT_ROOT)):
        assert absolute not in page, absolute
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1, "plotly.js embedded exactly once"
    assert page.count('class="plotly-graph-div"') == 8
    # training samples: 2 prompts × 3 variants; evaluation clips: 2 captions × (the real clip + 3 variants)
    assert page.count("data:image/gif;base64,") == 6 + 8
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and XSS not in page
    assert "notebook.show(" not in page and "executed_dir =" not in page  # no code
    assert "widget-view" not in page and "jupyter-widgets" not in page
    assert "Pick a variant" not in page and "Run this cell in JupyterLab" not in page  # cells tagged interactive
    assert "Run no_ema-seed2: failed (../executed/demo/no_ema-seed2.ipynb): ValueError: boom" in page
    assert "Does fine-tuning the text encoder help?" in page and "Which configuration is best?" in page
    assert "Primary metric:" in page and "replicates differ only in the training seed" in page
    assert "I3D weights not found" in page
    assert (tmp_path / "reports" / "demo" / "comparison_table.csv").is_file()
    executed_nb = nbformat.read(str(executed / "demo" / "analysis.ipynb"), as_version=4)
    assert not [o for c in executed_nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
