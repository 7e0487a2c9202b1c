"""Findings: each question of the study answered from the numbers, with its uncertainty.

Questions are data. A variant file that declares `compare_to: <variant>` (with `question:` and optionally
`primary_metric:`) asks "is this variant better than that one?"; the shipped text_finetuned and no_ema files declare
theirs, and a variant a user adds gets its finding the same way, with no code. "Which configuration is best?" is
always asked, over every variant, by the default primary metric.

How a question is answered (README, "Statistics"):
* One primary metric decides it. Its difference (variant − reference) is paired by seed where both variants have the
  seed; its 95% interval must exclude zero for a "better"/"worse" word. One seed, or no spread over the seeds,
  gives no verdict word at all.
* Every other metric is exploratory: its p-value is Holm-adjusted over the exploratory rows of the question (the
  family), and only an adjusted p below 0.05 earns a verdict word. Descriptive metrics (single-mini-batch losses,
  costs, pixel metrics against a held-out signer, the DTW control) are shown and never judged.
* When the two variants differ in `use_ema`, the question also compares EMA with raw weights within each run that
  keeps an EMA (paired by run).
* Text following -- back-translation BLEU-4 on unseen and on seen captions, and the DTW gap (shuffled − matched
  hand error) -- is reported next to the primary metric in every answer where it was measured.
"""
from __future__ import annotations

import dataclasses
import html
import math
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from t2s.config import PARAMS_DIR, ConfigError, load_config, primary_metric_for, read_yaml
from t2s.report.load import BASELINE, PRIMARY, Metric, Study, available_metrics, evaluation_metrics, evaluation_row
from t2s.report.stats import (
    ALPHA,
    CONFIDENCE,
    POWER,
    Difference,
    describe_difference,
    detectable_difference,
    format_estimate,
    holm,
    mean_ci,
    seed_difference,
)
from t2s.eval.metrics.validity import FVD_JUDGED_MIN_CLIPS
from t2s.report.tables import frame_html
from t2s.rundir import finite_number

# reported next to every question's primary metric, where measured: does the clip say its caption?
TEXT_FOLLOWING = ("bt_bleu4_unseen", "bt_bleu4_seen", "dtw_gap_unseen", "dtw_gap")
README_STATISTICS = "docs/statistics.md"


# ----------------------------------------------------------------------------------------------- the questions
@dataclass
class Question:
    variant: str
    reference: str
    text: str
    primary_key: str
    declared_in: str  # where the declaration was read: a run's config.json or params/<variant>.yaml


def _declaration(study: Study, variant: str) -> tuple[dict, str]:
    """The variant's question keys: from its runs' config.json (the record of what ran), else params/<variant>.yaml
    (runs written before these keys existed)."""
    for run in study.runs:
        if run.variant == variant and "compare_to" in run.config:
            return run.config, f"{run.name}/config.json"
    path = PARAMS_DIR / f"{variant}.yaml"
    if path.is_file():
        try:
            return read_yaml(path), f"params/{variant}.yaml"
        except ConfigError:
            return {}, ""
    return {}, ""


def questions(study: Study) -> list:
    """Every `compare_to` declaration of the study's variants, in variant order."""
    found = []
    for variant in study.variants:
        declared, where = _declaration(study, variant)
        reference = declared.get("compare_to")
        if not reference or reference == variant:
            continue
        text = declared.get("question") or f"Is {variant} better than {reference}?"
        scale = next((r.config.get("scale") for r in study.runs if r.config.get("scale")), None)
        primary = primary_metric_for(declared.get("primary_metric"), scale)
        found.append(Question(variant, str(reference), str(text), str(primary or PRIMARY),
                              where))
    return found


def metric_role(metric: Metric, study: Study) -> tuple[str, str]:
    """('exploratory' | 'descriptive', why) for this study: pixel metrics are exploratory only when no finished run
    used a signer-disjoint split (random, or a release's official split: PHOENIX-2014-T's and How2Sign's share
    signers between train and dev/val)."""
    if metric.role == "pixel":
        modes = {r.config.get("split_mode") for r in study.finished_runs}
        if modes <= {"random", "official"} and modes:
            return "exploratory", ""
        return "descriptive", ("compared pixel by pixel with the real clip of a signer the model never saw "
                               "(signer-disjoint split): it measures appearance mismatch more than signing")
    if metric.key == "fvd":
        rows = [evaluation_row(r) for r in study.finished_runs]
        counts = sorted({(r.get("fvd_num_generated"), r.get("fvd_num_real")) for r in rows
                         if finite_number(r.get("fvd")) is not None and r.get("fvd_judged") is not True}, key=str)
        if counts:
            shown = ", ".join(f"{g} generated vs {n} real" for g, n in counts)
            return "descriptive", (f"FVD over {shown} clips: below {FVD_JUDGED_MIN_CLIPS} per set it does not rank a "
                                   f"collapsed generator below a faithful one reliably (docs/evaluation.md)")
    if metric.role == "descriptive" or metric.better is None:
        return "descriptive", metric.why or "neither direction is better"
    return "exploratory", ""


# ----------------------------------------------------------------------------------------------- comparisons
def _by_seed(study: Study, variant: str, key: str) -> dict:
    values = study.values
    if values.empty or key not in values:
        return {}
    part = values[values["variant"] == variant]
    return {int(s): v for s, v in zip(part["seed"], part[key]) if pd.notna(v)}


def _within(runs: list, metric: Metric) -> Difference:
    """EMA minus raw weights of the same runs, paired by run (each weight set's evaluation row)."""
    pairs = {r.seed: (finite_number(evaluation_row(r, "ema").get(metric.key)),
                      finite_number(evaluation_row(r, "raw").get(metric.key))) for r in runs}
    return seed_difference({s: a for s, (a, _) in pairs.items() if a is not None},
                           {s: b for s, (_, b) in pairs.items() if b is not None})


def _side(d: Difference, metric: Metric) -> str:
    return "better" if (d.diff < 0) == (metric.better == "lower") else "worse"


@dataclass
class _Row:
    comparison: str
    metric: Metric
    role: str  # primary, within-run (EMA − raw inside runs: its own comparison), exploratory, descriptive
    d: Difference
    why: str = ""
    p_holm: float = math.nan

    def verdict(self) -> str:
        d = self.d
        if not math.isfinite(d.diff):
            return "cannot compare: " + _no_values(self.comparison, d)
        if self.role == "descriptive":
            return f"descriptive only ({self.why})"
        if not d.spread:
            return f"no spread over {d.n_a} seeds: no interval, no verdict"
        if not d.has_interval:
            return "one seed: no evidence either way"
        if self.role in ("primary", "within-run"):
            return f"{_side(d, self.metric)} (interval excludes zero)" if d.significant else "no clear difference"
        if self.p_holm < ALPHA:
            return f"{_side(d, self.metric)} (Holm-adjusted p < {ALPHA:g})"
        return "no clear difference after Holm's adjustment"

    def record(self) -> dict:
        d = self.d
        finite = math.isfinite(d.diff)
        p = self.p_holm if self.role == "exploratory" else d.p
        return {
            "comparison": self.comparison, "metric": self.metric.title, "role": self.role,
            "difference": f"{d.diff:+.4g}" if finite else "unavailable",
            f"{CONFIDENCE:.0%} interval": (f"[{d.low:+.4g}, {d.high:+.4g}]" if d.has_interval else
                                           "—" if not finite else "none (no spread)" if not d.spread else "none (one seed)"),
            "test": (f"{d.method}, {d.sizes}" + (f"; {d.note}" if d.note else "")) if finite else "—",
            "p (Holm within the question)": f"{p:.3g}" if math.isfinite(p) and self.role != "descriptive" else "—",
            "verdict": self.verdict(),
        }


def _no_values(comparison: str, d: Difference) -> str:
    """Which side of 'a − b' has no values (see the unavailable metrics)."""
    sides = [s.strip() for s in comparison.split("−")] if d.method != "paired" else []
    if len(sides) == 2 and (d.n_a == 0) != (d.n_b == 0):
        return f"no values for {sides[0] if d.n_a == 0 else sides[1]} (see the unavailable metrics)"
    return "unavailable on both sides (see the unavailable metrics)"


def _sentence(row: _Row, a: str, b: str) -> str:
    """The answer on one comparison, with no verdict word its interval does not support."""
    d, metric = row.d, row.metric
    where = f"{metric.label} ({a} − {b})"
    if not math.isfinite(d.diff):
        return f"Cannot answer on {where}: {_no_values(row.comparison, d)}."
    shown = describe_difference(d)
    if not d.spread:
        return (f"No verdict: {where} is {d.diff:+.4g} in every one of {d.n_a} seeds, so there is no spread to build "
                f"an interval from (the two may compute the same thing).")
    if not d.has_interval:
        return (f"One seed: no evidence either way. {where.capitalize()}: {shown}. Run more seeds "
                f"(python -m t2s ablate --seeds 0 1 2) for an interval.")
    if d.significant:
        return f"{a} is {_side(d, metric)} than {b} on {metric.label}: {shown}; the interval excludes zero."
    return f"No clear difference on {metric.label}: {shown}; the interval spans zero."


# ----------------------------------------------------------------------------------------------- findings
@dataclass
class Finding:
    question: str
    answer: str  # the verdict on the primary metric, in words
    table: pd.DataFrame  # every comparison behind it, one row per (comparison, metric)
    primary: Optional[str] = None  # the primary metric's label
    family: list = field(default_factory=list)  # the exploratory metrics Holm's adjustment ran over


def _rows(study: Study, comparison: str, diff, primary: Metric, metrics: list) -> list:
    rows = [_Row(comparison, primary, "primary", diff(primary))]
    for metric in metrics:
        if metric.key == primary.key:
            continue
        role, why = metric_role(metric, study)
        rows.append(_Row(comparison, metric, role, diff(metric), why))
    return rows


def _adjust(rows: list) -> list:
    """Holm over the exploratory rows that have a p-value; returns the family as 'comparison: metric' labels."""
    exploratory = [r for r in rows if r.role == "exploratory" and r.d.has_interval]
    for row, p in zip(exploratory, holm([r.d.p for r in exploratory])):
        row.p_holm = p
    return [f"{r.comparison}: {r.metric.label}" for r in exploratory]


def _text_following(rows: list, a: str, b: str) -> str:
    """The TEXT_FOLLOWING metrics that were measured and are not the primary one, as sentences."""
    out = ""
    for key in TEXT_FOLLOWING:
        row = next((r for r in rows if r.metric.key == key and r.role != "primary"), None)
        if row is None or not math.isfinite(row.d.diff):
            continue
        out += (f" Text following ({row.role}; {row.metric.label}, higher = the clip says more of its caption), "
                f"{a} − {b}: {describe_difference(row.d)}: {row.verdict()}.")
    return out


def _resolve_primary(key: str, metrics: list) -> Optional[Metric]:
    return next((m for m in metrics if m.key == key), None)


def power_sentence(d: Difference, metric: Metric) -> str:
    """"With n seeds and the observed spread, a difference smaller than X would be missed more often than not" (at
    `POWER`): what "no clear difference" can and cannot mean. Empty without an interval."""
    smallest = detectable_difference(d)
    if not math.isfinite(smallest):
        return ""
    seeds = f"{d.n_a} seeds" if d.method == "paired" else f"{d.n_a} and {d.n_b} seeds"
    return (f" Power: with {seeds} and the spread observed, a true difference in {metric.label} smaller than "
            f"±{smallest:.3g} would be detected less than {POWER:.0%} of the time ({d.method} t-test at "
            f"α = {ALPHA:g}), so “no clear difference” is not “no difference”.")


def _question_finding(study: Study, q: Question, metrics: list) -> Finding:
    title = f"{q.text} ({q.variant} vs {q.reference})"
    absent = [v for v in (q.variant, q.reference) if v not in study.variants_with_results]
    if absent:
        return Finding(title, f"Cannot answer: no finished run of {', '.join(absent)}.", pd.DataFrame())
    primary = _resolve_primary(q.primary_key, metrics)
    if primary is None:
        known = ", ".join(m.key for m in metrics)
        return Finding(title, f"Cannot answer: the primary metric {q.primary_key!r} declared in {q.declared_in} has "
                              f"no value in this study; metrics with values: {known}.", pd.DataFrame())
    comparison = f"{q.variant} − {q.reference}"
    rows = _rows(study, comparison, lambda m: seed_difference(_by_seed(study, q.variant, m.key),
                                                               _by_seed(study, q.reference, m.key)), primary, metrics)
    configs = {v: (study.runs_of(v)[0].config if study.runs_of(v) else {}) for v in (q.variant, q.reference)}
    within = ""
    if configs[q.variant].get("use_ema") != configs[q.reference].get("use_ema"):
        within, rows = _with_ema_within(study, q, primary, metrics, rows)
    family = _adjust(rows)  # before any sentence reads a Holm-adjusted p-value
    answer = (_sentence(rows[0], q.variant, q.reference) + power_sentence(rows[0].d, primary)
              + _text_following(rows, q.variant, q.reference) + within)
    return Finding(title, answer, pd.DataFrame([r.record() for r in rows]), primary.label, family)


def _with_ema_within(study: Study, q: Question, primary: Metric, metrics: list, rows: list) -> tuple[str, list]:
    """The EMA question also compares EMA with raw weights inside each run that keeps an EMA (paired by run): its own
    comparison (role "within-run": it does not decide the question), its other metrics in the question's Holm family.
    Returns (its sentences, the rows with its rows added)."""
    within_primary = primary if primary.source == "evaluation" else _resolve_primary(PRIMARY, metrics)
    if within_primary is not None:  # within a run both weight sets are measured, so neither is "the deployed" one
        within_primary = dataclasses.replace(within_primary, label=within_primary.label.replace(" (deployed weights)", ""))
    answer = ""
    for variant in (q.reference, q.variant):
        runs = [r for r in study.runs_of(variant) if r.deployed_weights == "ema"]
        if not runs or within_primary is None:
            continue
        comparison = f"EMA − raw weights, {variant} runs"
        within = [m for m in metrics if m.source == "evaluation"]
        new = _rows(study, comparison, lambda m: _within(runs, m), within_primary, within)
        new = [r for r in new if math.isfinite(r.d.diff)]
        if new and new[0].metric.key == within_primary.key:
            new[0].role = "within-run"
            answer += (f" Within {variant} runs (its own comparison, not the question's): "
                       + _sentence(new[0], "EMA weights", "raw weights"))
        rows = rows + new
    return answer, rows


def _best_finding(study: Study, metrics: list) -> Finding:
    """The variant with the lowest mean primary metric, tested against every other variant with Holm's adjustment
    over those k − 1 comparisons (choosing the best by its mean and then testing it against the runner-up alone would
    not correct for the choice): a win is claimed only where every adjusted p is below ALPHA."""
    question = "Which configuration is best?"
    primary = _resolve_primary(PRIMARY, metrics)
    if primary is None:
        return Finding(question, "Cannot answer: no finished run has a validation loss.", pd.DataFrame())
    means = {v: mean_ci(_by_seed(study, v, primary.key).values()) for v in study.variants_with_results}
    ranked = sorted((v for v in means if means[v].n), key=lambda v: means[v].mean)
    if not ranked:
        return Finding(question, "Cannot answer: no finished run has a validation loss.", pd.DataFrame())
    best = ranked[0]
    diffs = {v: seed_difference(_by_seed(study, best, primary.key), _by_seed(study, v, primary.key))
             for v in ranked[1:]}
    adjusted = dict(zip(diffs, holm([d.p for d in diffs.values()])))
    records = []
    for i, v in enumerate(ranked):
        d = diffs.get(v)
        records.append({
            "rank": i + 1, "variant": v, primary.title: format_estimate(means[v]), "seeds (n)": means[v].n,
            f"{best} − this": describe_difference(d) if d is not None else "—",
            f"p (Holm over the {len(diffs)} comparisons with {best})":
                f"{adjusted[v]:.3g}" if d is not None and math.isfinite(adjusted[v]) else "—"})
    table = pd.DataFrame(records)
    if len(ranked) == 1:
        return Finding(question, f"Only {best} has finished runs: nothing to rank.", table, primary.label)
    lead = f"Lowest mean {primary.label}: {best} ({format_estimate(means[best])}), then {ranked[1]}. "
    wins = [v for v in diffs if diffs[v].has_interval and adjusted[v] < ALPHA and diffs[v].diff < 0]
    if len(wins) == len(diffs):
        answer = lead + (f"{best} is better than each of the other {len(diffs)} variants (Holm-adjusted p < {ALPHA:g} "
                         f"over the {len(diffs)} comparisons with it).")
    else:
        undecided = [v for v in diffs if v not in wins]
        answer = lead + (f"The ranking is by means only: {best} is not clearly better than {', '.join(undecided)} "
                         f"(Holm over the {len(diffs)} comparisons with {best}; see the table).")
        answer += next(filter(None, (power_sentence(diffs[v], primary) for v in undecided)), "")
    return Finding(question, answer, table, primary.label, [f"{best} − {v}: {primary.label}" for v in diffs])


def findings(study: Study) -> list:
    """One finding per declared question (variant files' `compare_to`), then "Which configuration is best?"."""
    metrics = [m for m in available_metrics(study)]
    return [_question_finding(study, q, metrics) for q in questions(study)] + [_best_finding(study, metrics)]


# ----------------------------------------------------------------------------------------------- scope and HTML
REFERENCE_SCALE = "full"  # the reference setup (params/scales/full.yaml): a finding at another scale is about that model
# Config keys that say nothing about the model, its training or its evaluation: left out of the scale comparison.
_BOOKKEEPING = {"variant", "scale", "description", "compare_to", "question", "primary_metric", "seed", "resume_from",
                "save_every", "keep_checkpoints", "keep_optimizer_state", "log_every", "trackers", "sample_every",
                "sample_prompts", "num_workers", "data_dir", "manifest", "eval_batch_size", "channels_last",
                "mixed_precision", "gradient_checkpointing", "validate_every"}
_PREDICTION = {"sample": "x0-prediction", "v_prediction": "v-prediction", "epsilon": "ε-prediction"}


def _option_words(key: str, value, reference) -> str:
    """One way the study's scale differs from the reference, in words."""
    on_off = {"frame_position_embedding": "frame position embeddings", "pooled_text_conditioning":
              "pooled caption conditioning", "spatial_position_channels": "pixel coordinate channels",
              "aligned_cross_attention": "aligned cross-attention", "zero_terminal_snr": "zero terminal SNR",
              "use_ema": "EMA", "ema_warmup": "EMA warm-up", "freeze_text_encoder": "a frozen text encoder"}
    if key in on_off:
        return f"{on_off[key]} {'on' if value else 'off'} (reference: {'on' if reference else 'off'})"
    if key == "prediction_type":
        return f"{_PREDICTION.get(value, value)} (reference: {_PREDICTION.get(reference, reference)})"
    if key == "beta_schedule":
        return f"the {value} noise schedule (reference: {reference})"
    if key == "text_layout_channels":
        return (f"text layout maps ({value} channels)" if value else "no text layout maps") + \
            (f" (reference: {reference})" if reference else " (reference: none)")
    if key == "motion_loss_weight":
        return f"a motion-weighted loss (weight {value:g}; reference: {reference:g})"
    if key == "eta":
        return f"DDIM eta {value:g} (reference: {reference:g})"
    return f"{key} {value} (reference: {reference})"


# The groups a scale's differences are named in, in this order; a key in none of them goes under "other".
SCALE_GROUPS = (
    ("clips and data", ("image_size", "num_frames", "synthsign_num_clips", "train_ratio", "val_max_clips")),
    ("denoiser", ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_heads",
                  "text_layout_channels", "aligned_cross_attention", "spatial_position_channels",
                  "frame_position_embedding", "pooled_text_conditioning")),
    ("diffusion", ("prediction_type", "beta_schedule", "zero_terminal_snr", "num_train_timesteps", "motion_loss_weight",
                   "cond_drop_prob")),
    ("training", ("max_steps", "num_epochs", "batch_size", "gradient_accumulation_steps", "learning_rate",
                  "text_encoder_lr", "warmup_steps", "weight_decay", "ema_decay", "ema_update_every")),
    ("sampling and evaluation", ("num_inference_steps", "guidance_scale", "eta", "eval_num_clips")),
)


def scale_differences(config: dict, reference: dict) -> dict[str, list[str]]:
    """How a run's config differs from the reference scale's config of the same variant, in words, by the groups
    `SCALE_GROUPS` names ({"denoiser": ["model_channels 32 (reference: 64)", ...], ...}): every setting that differs
    (the clip size as one), empty groups left out."""
    changed = [k for k in config if k in reference and k not in _BOOKKEEPING and config[k] != reference[k]]
    grouped = {name: [k for k in keys if k in changed] for name, keys in SCALE_GROUPS}
    grouped["other"] = [k for k in changed if not any(k in keys for _, keys in SCALE_GROUPS)]
    out = {}
    for name, keys in grouped.items():
        words = []
        if "image_size" in keys or "num_frames" in keys:
            words.append(f"{config['image_size']}×{config['image_size']} clips of {config['num_frames']} frames "
                         f"(reference: {reference['image_size']}×{reference['image_size']} of {reference['num_frames']})")
        words += [_option_words(k, config[k], reference[k]) for k in keys if k not in ("image_size", "num_frames")]
        if words:
            out[name] = words
    return out


def _scale_scope(study: Study) -> str:
    """The sentence that says which model the study is: its scale's every difference from the reference scale."""
    runs = [r for r in study.finished_runs if r.config]
    if not runs:
        return ""
    config = next((r.config for r in runs if r.variant == BASELINE), runs[0].config)
    scale = config.get("scale") or "its own"
    if scale == REFERENCE_SCALE:
        return f"Model: the reference scale ({REFERENCE_SCALE}), as params/scales/{REFERENCE_SCALE}.yaml sets it."
    try:
        reference = load_config(config.get("variant"), REFERENCE_SCALE).to_dict()
    except ConfigError:
        reference = load_config(BASELINE, REFERENCE_SCALE).to_dict()
    differences = scale_differences(config, reference)
    count = sum(len(words) for words in differences.values())
    listed = "; ".join(f"{group[0].upper() + group[1:]}: {', '.join(words)}" for group, words in differences.items())
    return (f"Model: the {scale} scale, which differs from the reference scale ({REFERENCE_SCALE}) in {count} settings. "
            f"{listed}. Its findings are about this model; they are not findings about the reference model.")


def _parts_scope(study: Study) -> str:
    """Which part of the evaluation set the numbers come from."""
    rows = [evaluation_row(r) for r in study.finished_runs]
    signers = sorted({str(r.get("eval_signers")) for r in rows if r.get("eval_signers")})
    parts = sorted({str(r.get("eval_part")) for r in rows if r.get("eval_part")})
    if parts != ["test"]:
        return ("Evaluation part: not recorded (runs evaluated before the development/test parts existed)."
                if not parts else f"Evaluation parts: {', '.join(parts)} (mixed: re-evaluate with python -m t2s "
                                  f"evaluate to score the test part only).")
    return (f"Every evaluation number here is scored on the test part of the held-out clips ({'; '.join(signers)} "
            f"and their captions); settings were chosen on the development part, which shares no caption and no "
            f"signer with it, and the training's validation loss reads that development part.")


def scope_text(study: Study) -> str:
    """What varies between replicates and what is held fixed, read from the runs' configs."""
    runs = study.finished_runs
    seeds = sorted({r.seed for r in runs})
    configs = [r.config for r in runs]

    def values(key):
        return ", ".join(sorted({str(c.get(key)) for c in configs if key in c})) or "not recorded"

    return (f"Scope: replicates differ only in the training seed (seeds {', '.join(map(str, seeds)) or 'none'}: "
            f"initial weights, data order, noise and timestep draws), so every interval covers training randomness "
            f"only. Held fixed in every run: the train/validation split (split_mode {values('split_mode')}, "
            f"split_seed {values('split_seed')}), the evaluation captions (eval_num_clips = "
            f"{values('eval_num_clips')} clips of the seen, novel and paraphrase caption splits) and the sampling noise (clip i is sampled from seed i). "
            "To vary them, set split_seed, eval_num_clips or the data with -p (see the README's configuration). "
            + " ".join(filter(None, (_parts_scope(study), _scale_scope(study)))))


def answers_html(study: Study) -> str:
    """The report's first section: each question's answer and the study's scope in a few lines, before the tables."""
    e = html.escape
    if not study.finished_runs:
        return "<p><em>No finished runs, so there is nothing to answer yet.</em></p>"
    items = []
    for finding in findings(study):
        answer = finding.answer.split(" Text following (")[0].split(" Within ")[0]
        metric = f" <small>(primary metric: {e(finding.primary)})</small>" if finding.primary else ""
        items.append(f"<li><b>{e(finding.question)}</b> {e(answer)}{metric}</li>")
    seeds = sorted({r.seed for r in study.finished_runs})
    scope = [f"{len(study.finished_runs)} finished runs over seeds {', '.join(map(str, seeds))}; intervals cover "
             f"training randomness only.", _parts_scope(study), _scale_scope(study)]
    notes = "".join(f"<li>{e(s)}</li>" for s in scope if s)
    partial = ("<p><b>Partial study:</b> the answers use only the finished runs (see the status below).</p>"
               if study.is_partial else "")
    return (f"<ul>{''.join(items)}</ul>{partial}<p><b>Scope</b></p><ul>{notes}</ul>"
            "<p><small>The details, with every comparison behind each answer, are under Findings.</small></p>")


def findings_html(study: Study) -> str:
    if not study.finished_runs:
        return "<p><em>No finished runs, so there is nothing to conclude yet.</em></p>"
    e = html.escape
    notes = [
        f"Each question has one primary metric that decides it; its difference comes with a {CONFIDENCE:.0%} "
        "interval, paired by training seed where both variants have the seed (Welch's unpaired interval otherwise; "
        "the test column says which). Other metrics are exploratory: their p-values are Holm-adjusted within the "
        "question (the family is listed under each question). Descriptive rows are never judged. One seed, or no "
        "spread over the seeds, gives no verdict.",
        scope_text(study),
    ]
    if not evaluation_metrics(study):
        notes.append("No evaluation metrics were available, so only the training metrics are compared.")
    if study.is_partial:
        notes.append("This is a partial study (see the run status above): the answers use only the finished runs.")
    parts = [f"<p><em>{e(n)}</em></p>" for n in notes]
    parts.append(f'<p><small>How these rules work: <a href="../{e(README_STATISTICS)}">docs/statistics.md</a>.'
                 "</small></p>")
    for finding in findings(study):
        parts.append(f"<h3>{e(finding.question)}</h3>")
        if finding.primary:
            parts.append(f"<p><b>Primary metric:</b> {e(finding.primary)}.</p>")
        parts.append(f"<p>{e(finding.answer)}</p>")
        if finding.primary and finding.table is not None and not finding.table.empty and "role" in finding.table:
            family = (f"{len(finding.family)} exploratory comparisons with an interval: {'; '.join(finding.family)}"
                      if finding.family else "empty (no exploratory comparison has an interval)")
            parts.append(f"<p><small>Holm family: {e(family)}.</small></p>")
        if not finding.table.empty:
            parts.append(frame_html(finding.table))
    return "\n".join(parts)
