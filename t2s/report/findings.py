"""Findings: each question of the study answered from the numbers, with its uncertainty."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from .load import BASELINE, PRIMARY, TRAINING_METRICS, Metric, Run, Study, _number, available_metrics, evaluation_metrics, evaluation_row
from .stats import Difference, _finite, format_difference, format_estimate, mean_ci, paired_difference, welch_difference
from .tables import _frame_html

@dataclass
class Finding:
    question: str
    answer: str  # the verdict on the primary metric, in words
    table: pd.DataFrame  # every comparison behind it, one row per (comparison, metric)


def _values(study: Study, variant: str, key: str) -> pd.Series:
    values = study.values
    if values.empty or key not in values:
        return pd.Series(dtype=float)
    return values.loc[values["variant"] == variant, key]


def _verdict(d: Difference, metric: Metric, change: str) -> str:
    """The answer to "does <change> help?" for d = mean(with it) - mean(without it): sign and interval decide."""
    if not math.isfinite(d.diff):
        return "Cannot tell: no values to compare"
    if metric.better is None:
        return f"{change} changes it by {d.diff:+.4g} (neither direction is better)"
    effect = "helps" if (d.diff < 0) == (metric.better == "lower") else "hurts"
    if d.significant is None:
        return f"Indicative only: {change} {effect} here, but a single seed gives no interval"
    if not d.significant:
        return f"Not shown: {change} {effect} on average, but the 95% interval spans zero (not significant)"
    return f"{'Yes' if effect == 'helps' else 'No'}: {change} {effect} (significant)"


def _row(comparison: str, metric: Metric, d: Difference) -> dict:
    """One table row: the first-named side of `comparison` is better / worse / not significantly different."""
    if metric.better is None or not math.isfinite(d.diff):
        called = "neither direction is better" if math.isfinite(d.diff) else "—"
    else:
        side = "better" if (d.diff < 0) == (metric.better == "lower") else "worse"
        called = {None: f"{side} (no interval)", False: "not significant", True: f"{side} (significant)"}[d.significant]
    sizes = f"{d.method}, n={d.n_a}" if d.method == "paired" else f"{d.method}, n={d.n_a} vs {d.n_b}"
    if not math.isfinite(d.diff):
        return {"comparison": comparison, "metric": metric.title, "difference": "unavailable", "95% interval": "—",
                "test": sizes, "verdict": _no_values(comparison, d)}
    return {"comparison": comparison, "metric": metric.title, "difference": f"{d.diff:+.4g}",
            "95% interval": f"[{d.low:+.4g}, {d.high:+.4g}]" if d.has_interval else "none (a single seed)",
            "test": sizes, "verdict": called}


def _no_values(comparison: str, d: Difference) -> str:
    """Why a difference could not be computed: which side of 'a − b' has no values (see the unavailable metrics)."""
    sides = [s.strip() for s in comparison.split("−")] if d.method != "paired" else []
    if len(sides) == 2 and (d.n_a == 0) != (d.n_b == 0):
        return f"cannot compare: no values for {sides[0] if d.n_a == 0 else sides[1]} (see the unavailable metrics)"
    return "cannot compare: unavailable on both sides (see the unavailable metrics)"


def _missing(study: Study, variants: Sequence[str]) -> list:
    return [v for v in variants if v not in study.variants_with_results]


def _between(study: Study, a: str, b: str, metric: Metric) -> Difference:
    return welch_difference(_values(study, a, metric.key), _values(study, b, metric.key))


def _within(runs: Sequence[Run], metric: Metric) -> Difference:
    """EMA minus raw weights of the same runs, paired by run."""
    if metric.source == "training":
        ema = [_number(r.summary.get("val_loss_ema")) for r in runs]
        raw = [_number(r.summary.get("val_loss_raw")) for r in runs]
    else:
        ema = [_number(evaluation_row(r, "ema").get(metric.key)) for r in runs]
        raw = [_number(evaluation_row(r, "raw").get(metric.key)) for r in runs]
    return paired_difference(ema, raw)


def _sentence(verdict: str, metric: Metric, comparison: str, d: Difference) -> str:
    return f"{verdict}. {metric.label.capitalize()}, {comparison}: {format_difference(d, verdict=False)}."


def _text_encoder_finding(study: Study, metrics: list) -> Finding:
    question = "Does unfreezing the text encoder help? (text_finetuned vs baseline)"
    absent = _missing(study, ["text_finetuned", BASELINE])
    if absent:
        return Finding(question, f"Cannot answer: no finished run of {', '.join(absent)}.", pd.DataFrame())
    comparison = "text_finetuned − baseline"
    rows = [_row(comparison, m, _between(study, "text_finetuned", BASELINE, m)) for m in metrics]
    d = _between(study, "text_finetuned", BASELINE, metrics[0])
    return Finding(question, _sentence(_verdict(d, metrics[0], "unfreezing the text encoder"), metrics[0], comparison, d),
                   pd.DataFrame(rows))


def _ema_finding(study: Study, metrics: list) -> Finding:
    question = "Is EMA important? (baseline with EMA vs no_ema; EMA vs raw weights within each run)"
    sentences, rows = [], []
    absent = _missing(study, [BASELINE, "no_ema"])
    if absent:
        sentences.append(f"Across variants: cannot answer, no finished run of {', '.join(absent)}.")
    else:
        comparison = "baseline − no_ema"
        d = _between(study, BASELINE, "no_ema", metrics[0])
        sentences.append("Across variants: " + _sentence(_verdict(d, metrics[0], "EMA"), metrics[0], comparison, d))
        rows += [_row(comparison, m, _between(study, BASELINE, "no_ema", m)) for m in metrics]
    within = [Metric(PRIMARY, "validation loss", "lower", "training")] + metrics[1:]
    for variant in study.variants_with_results:
        runs = [r for r in study.runs_of(variant) if r.deployed_weights == "ema"]
        comparison = f"EMA − raw weights, {variant} runs"
        d = _within(runs, within[0])
        if math.isfinite(d.diff):
            sentences.append(f"Within {variant} runs: " + _sentence(_verdict(d, within[0], "EMA"), within[0], comparison, d))
        rows += [_row(comparison, m, _within(runs, m)) for m in within if math.isfinite(_within(runs, m).diff)]
    return Finding(question, " ".join(sentences), pd.DataFrame(rows))


def _best_finding(study: Study, metrics: list) -> Finding:
    question = "Which configuration is best?"
    rows = []
    for metric in (m for m in metrics if m.better):
        means = {v: _finite(_values(study, v, metric.key)) for v in study.variants_with_results}
        ranked = sorted((v for v in means if len(means[v])), key=lambda v: means[v].mean(),
                        reverse=metric.better == "higher")
        if not ranked:
            continue
        row = {"metric": metric.title, "best": ranked[0], "its mean": format_estimate(mean_ci(means[ranked[0]])),
               "runner-up": "—", "difference": "—", "95% interval": "—", "verdict": "no other variant to rank against"}
        if len(ranked) > 1:
            d = welch_difference(means[ranked[0]], means[ranked[1]])
            row.update({k: v for k, v in _row("", metric, d).items() if k in ("difference", "95% interval", "verdict")})
            row["runner-up"] = ranked[1]
            row["verdict"] = {True: "a clear win (significant)", False: "not a clear win (not significant)",
                              None: "indicative only (no interval)"}[d.significant]
        rows.append(row)
    if not rows:
        return Finding(question, "Cannot answer: no finished run has a validation loss.", pd.DataFrame())
    first = rows[0]
    answer = f"By the primary metric ({metrics[0].label}), {first['best']} is best: {first['its mean']}"
    answer += (f"; versus the runner-up {first['runner-up']}: {first['difference']} {first['95% interval']}, "
               f"{first['verdict']}." if first["runner-up"] != "—" else "; no other variant has finished runs.")
    return Finding(question, answer, pd.DataFrame(rows))


def findings(study: Study) -> list:
    """The three questions of the ablation, answered from the numbers with their uncertainty.

    The primary metric is validation loss of the deployed weights; evaluation metrics, where present, are compared
    the same way in each finding's table.
    """
    primary = next(m for m in TRAINING_METRICS if m.key == PRIMARY)
    metrics = [primary] + [m for m in available_metrics(study) if m.source == "evaluation"]
    return [_text_encoder_finding(study, metrics), _ema_finding(study, metrics), _best_finding(study, metrics)]


def findings_html(study: Study) -> str:
    if not study.finished_runs:
        return "<p><em>No finished runs, so there is nothing to conclude yet.</em></p>"
    notes = [f"Primary metric: {TRAINING_METRICS[0].label}, lower is better. Differences between variants come with "
             "a 95% Welch interval over seeds (EMA vs raw weights of the same runs: a paired interval); an interval "
             "that spans zero is called not significant, and a single seed gives no interval."]
    if not evaluation_metrics(study):
        notes.append("No evaluation metrics were available, so only validation loss is compared.")
    if study.is_partial:
        notes.append("This is a partial study (see the run status above): the answers use only the finished runs.")
    parts = [f"<p><em>{html.escape(n)}</em></p>" for n in notes]
    for finding in findings(study):
        parts.append(f"<h3>{html.escape(finding.question)}</h3><p>{html.escape(finding.answer)}</p>")
        if not finding.table.empty:
            parts.append(_frame_html(finding.table))
    return "\n".join(parts)
