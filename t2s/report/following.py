"""Does the model follow the text? The calibration checks of a study's runs, and back-translation between its bounds.

A text-encoder question is only worth asking of a model whose clips depend on their caption. Each finished run's
deployed weights are checked against `CHECKS` (README, "Back-translation"): a study whose runs fail them answers its
questions about a model that does not sign its captions, and the report says so. Beside them, not a check: the
caption dependence of the held-out loss (`t2s.eval.evaluate`), which shows whether the denoiser uses the text at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import pandas as pd
import plotly.graph_objects as go

from t2s.report.load import BT_GROUP_LABELS, Study, evaluation_row
from t2s.rundir import finite_number


@dataclass(frozen=True)
class Check:
    """A threshold on an estimate with an interval: "met" when the whole interval clears it, "NOT met" when the whole
    interval misses it, "undecided" when the interval straddles it (or there is no interval)."""
    name: str
    needs: tuple  # evaluation columns: the estimate first, then its interval's low and high, then the bounds
    met: Callable[[dict], bool]  # the interval's low end clears the threshold
    missed: Callable[[dict], bool]  # the interval's high end misses it
    shows: Callable[[dict], str]
    clips: str  # the evaluation column that counts the clips behind the estimate


def _bt(v: dict, end: str) -> float:
    return v[f"bt_bleu4_seen{end}"]


CHECKS = (
    Check("back-translation on seen captions ≥ ½ of the ceiling, above the floor",
          ("bt_bleu4_seen", "bt_bleu4_seen_low", "bt_bleu4_seen_high", "bt_bleu4_seen_ceiling", "bt_bleu4_seen_floor"),
          lambda v: _bt(v, "_low") >= 0.5 * _bt(v, "_ceiling") and _bt(v, "_low") > _bt(v, "_floor"),
          lambda v: _bt(v, "_high") < 0.5 * _bt(v, "_ceiling") or _bt(v, "_high") <= _bt(v, "_floor"),
          lambda v: f"BLEU-4 {v['bt_bleu4_seen']:.1f} [{v['bt_bleu4_seen_low']:.1f}, {v['bt_bleu4_seen_high']:.1f}]; "
                    f"floor {v['bt_bleu4_seen_floor']:.1f}, ceiling {v['bt_bleu4_seen_ceiling']:.1f}",
          "num_clips_seen"),
    Check("DTW gap ≥ 25% of the shuffled error, above 0",
          ("dtw_gap", "dtw_gap_low", "dtw_gap_high", "dtw_error_shuffled"),
          lambda v: v["dtw_gap_low"] >= 0.25 * v["dtw_error_shuffled"] and v["dtw_gap_low"] > 0,
          lambda v: v["dtw_gap_high"] < 0.25 * v["dtw_error_shuffled"] or v["dtw_gap_high"] <= 0,
          lambda v: f"gap {v['dtw_gap']:.3f} [{v['dtw_gap_low']:.3f}, {v['dtw_gap_high']:.3f}] = "
                    f"{100 * v['dtw_gap'] / v['dtw_error_shuffled']:.0f}% of {v['dtw_error_shuffled']:.3f}",
          "dtw_clips"),
    Check("hand detection ≥ 80%", ("hand_detection_rate", "hand_detection_rate_low", "hand_detection_rate_high"),
          lambda v: v["hand_detection_rate_low"] >= 0.8, lambda v: v["hand_detection_rate_high"] < 0.8,
          lambda v: f"{100 * v['hand_detection_rate']:.0f}% [{100 * v['hand_detection_rate_low']:.0f}, "
                    f"{100 * v['hand_detection_rate_high']:.0f}]",
          "num_clips"),
)


def check_verdict(row: dict, check: Check) -> str:
    """'met: <numbers>, n = <clips> clips', 'NOT met: …', 'undecided: … (the interval straddles the threshold)', or
    'not measured: <missing columns>'."""
    values = {k: finite_number(row.get(k)) for k in check.needs}
    missing = [k for k in check.needs if values[k] is None]
    if missing:
        return "not measured: " + ", ".join(missing)
    clips = finite_number(row.get(check.clips))
    count = f"; n = {int(clips)} clips" if clips is not None else ""
    if check.met(values):
        return f"met: {check.shows(values)}{count}"
    if check.missed(values):
        return f"NOT met: {check.shows(values)}{count}"
    return f"undecided: {check.shows(values)}{count} (the interval straddles the threshold)"


def following_table(study: Study) -> pd.DataFrame:
    """One row per finished run (deployed weights): each check's verdict from its interval (`check_verdict`)."""
    rows = []
    for run in study.finished_runs:
        row = evaluation_row(run)
        record = {"run": run.name, "weights": run.deployed_weights}
        for check in CHECKS:
            record[check.name] = check_verdict(row, check) if row else "not measured: (no evaluation row)"
        record[DEPENDENCE] = _dependence(row)
        rows.append(record)
    return pd.DataFrame(rows, columns=["run", "weights"] + [c.name for c in CHECKS] + [DEPENDENCE])


DEPENDENCE = "caption dependence (not a check)"


def _dependence(row: Optional[dict]) -> str:
    """How much of the held-out loss the right caption saves: the first sign that a denoiser uses the text."""
    values = [finite_number((row or {}).get(k)) for k in ("caption_dependence", "val_loss", "val_loss_other_caption")]
    if any(v is None for v in values):
        return "not measured: " + str((row or {}).get("caption_dependence_status") or "no evaluation row")
    share, own, other = values
    return f"{share:.2f}% of the held-out loss ({own:.4f} with its caption, {other:.4f} with another clip's)"


def back_translation_figure(study: Study) -> Optional[go.Figure]:
    """Back-translation BLEU-4 per caption group: each finished run (deployed weights) as a point with its bootstrap
    interval, between the floor (readings against other captions) and the ceiling (the real clips)."""
    fig = go.Figure()
    groups = list(BT_GROUP_LABELS)
    bounds = {}
    shown = False
    for variant in study.variants_with_results:
        xs, ys, lows, highs, texts = [], [], [], [], []
        for run in study.runs_of(variant):
            if not run.finished:
                continue
            row = evaluation_row(run)
            for group in groups:
                value = finite_number(row.get(f"bt_bleu4_{group}"))
                if value is None:
                    continue
                low, high = finite_number(row.get(f"bt_bleu4_{group}_low")), finite_number(row.get(f"bt_bleu4_{group}_high"))
                xs.append(group)
                ys.append(value)
                lows.append(value - low if low is not None else 0.0)
                highs.append(high - value if high is not None else 0.0)
                texts.append(run.name)
                for part in ("floor", "ceiling"):
                    bound = finite_number(row.get(f"bt_bleu4_{group}_{part}"))
                    if bound is not None:
                        bounds.setdefault((group, part), bound)
        if xs:
            shown = True
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=variant, text=texts,
                                     error_y=dict(type="data", array=highs, arrayminus=lows),
                                     hovertemplate="%{text}<br>%{x}: BLEU-4 %{y:.1f}<extra></extra>"))
    if not shown:
        return None
    for part, dash in (("ceiling", "dash"), ("floor", "dot")):
        xs = [g for g in groups if (g, part) in bounds]
        fig.add_trace(go.Scatter(x=xs, y=[bounds[(g, part)] for g in xs], mode="markers", name=part,
                                 marker=dict(symbol="line-ew-open", size=30, color="black"),
                                 hovertemplate=f"{part}: %{{y:.1f}}<extra></extra>"))
    fig.update_layout(title="Back-translation BLEU-4 by caption group (points: runs with 95% bootstrap intervals; "
                            "bars: ceiling and floor)", yaxis_title="BLEU-4 (0-100)", xaxis_title="caption group",
                      template="plotly_white", scattermode="group", height=420)
    if all(math.isfinite(v) for v in bounds.values()):
        fig.update_yaxes(rangemode="tozero")
    return fig
