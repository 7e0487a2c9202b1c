"""The benchmark's goals, as data: each names where its value lies in the result, its threshold and direction, and the
parts of the result it is checked for; `evaluate_goals` reads the table and says met / not met / null with a reason.

A goal's fields:
    goal        the sentence shown, formatted with the scope's names ({scale}, {variant}, {dtype}, {budget_s})
    scope       "reference" (the reference scale), "reference_variants" (each step variant run there), "scales"
                (every scale run), "race"
    value       a dotted path into the scope's part of the result, or {"sum": [paths]} or {"difference": [a, b]}
    at_least / below    the threshold and its direction
    missing     the reason shown when the value is absent (None: no row at all then); `if_absent`: the sentence
                then, where the scope's part of the result (and so its names) is absent
    stated_for  the device type the goal is stated for; measured elsewhere, the row says so
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

REFERENCE_SCALE = "full"

GOALS: list[dict[str, Any]] = [
    {"goal": "reference scale: t2s step >= 3x faster than diffusers UNet3DConditionModel (matched parameters; "
             "median steps)",
     "scope": "reference", "value": "models.diffusers.t2s_speedup_median", "at_least": 3.0,
     "missing": "reference scale or diffusers not run", "stated_for": "cpu"},
    {"goal": "reference scale: one clip (DDIM 50 steps, classifier-free guidance) samples in <= 90 s",
     "scope": "reference", "value": "sampling.seconds_at_target", "below": 90.0001,
     "missing": "reference scale not run", "stated_for": "cpu"},
    {"goal": "reference scale, both models with step variant '{variant}': t2s >= 2x faster than diffusers",
     "scope": "reference_variants", "value": "t2s_speedup_vs_diffusers_same_options", "at_least": 2.0,
     "missing": None},
    {"goal": "reference scale: t2s step >= 50% of the measured matmul peak (MFU)",
     "scope": "reference", "value": "models.t2s.step.mfu", "at_least": 0.5, "missing": "reference scale not run"},
    {"goal": "reference scale, step variant '{variant}': t2s MFU >= 50% (vs the {dtype} peak)",
     "scope": "reference_variants", "value": "step.mfu", "at_least": 0.5, "missing": None},
    {"goal": "{scale}: EMA update < 2% of the step (one update per step)",
     "scope": "scales", "value": "models.t2s.phases.ema.share", "below": 0.02, "missing": None},
    {"goal": "{scale}: EMA < 2% of an optimizer step at the config's accumulation and ema_update_every",
     "scope": "scales", "value": "models.t2s.amortized.shares.ema", "below": 0.02, "missing": None},
    {"goal": "{scale}: data + text < 5% of the step (steady state)",
     "scope": "scales", "value": {"sum": ["models.t2s.phases.data.share", "models.t2s.phases.text.share"]},
     "below": 0.05, "missing": None},
    {"goal": "race ({scale}, {budget_s:.0f} s each): t2s held-out loss < diffusers' (raw weights; value = t2s - diffusers)",
     "scope": "race", "value": {"difference": ["contenders.t2s.held_out_loss", "contenders.diffusers.held_out_loss"]},
     "below": 0.0, "missing": "race not run", "if_absent": "race: t2s held-out loss < diffusers'"},
    {"goal": "race ({scale}, {budget_s:.0f} s each): the same with EMA weights",
     "scope": "race", "value": {"difference": ["contenders.t2s.held_out_loss_ema", "contenders.diffusers.held_out_loss_ema"]},
     "below": 0.0, "missing": None},
]


def lookup(data: Any, path: str) -> Optional[float]:
    """The value at a dotted path, or None where any part is missing."""
    for key in path.split("."):
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


def goal_value(part: Optional[dict], spec) -> Optional[float]:
    if part is None:
        return None
    if isinstance(spec, str):
        return lookup(part, spec)
    values = [lookup(part, p) for p in spec.get("sum", spec.get("difference", []))]
    if any(v is None for v in values):
        return None
    return sum(values) if "sum" in spec else values[0] - values[1]


def _parts(result: dict, scope: str) -> Iterator[tuple[Optional[dict], dict]]:
    """(the part of the result a goal of `scope` reads, the names its sentence is formatted with); one (None, names)
    when the scope's single part is absent."""
    ref = result["scales"].get(REFERENCE_SCALE)
    if scope == "reference":
        yield ref, {"scale": REFERENCE_SCALE}
    elif scope == "reference_variants":
        for variant, part in (ref or {}).get("variants", {}).items():
            yield part, {"scale": REFERENCE_SCALE, "variant": variant, "dtype": part.get("matmul_peak_dtype")}
    elif scope == "scales":
        for scale, part in result["scales"].items():
            yield part, {"scale": scale}
    elif scope == "race":
        race = result.get("race")
        yield race, ({"scale": race["scale"], "budget_s": race["budget_s"]} if race else {})


def evaluate_goals(result: dict) -> list[dict]:
    """Rows {goal, value, threshold, met, reason} of the GOALS table against a benchmark result."""
    rows = []
    on = result["machine"]["device"].split(":")[0]
    for spec in GOALS:
        for part, names in _parts(result, spec["scope"]):
            value = goal_value(part, spec["value"])
            if value is None and spec["missing"] is None:
                continue
            threshold = spec.get("at_least", spec.get("below"))
            met = None if value is None else bool(value >= threshold if "at_least" in spec else value < threshold)
            reason = spec["missing"] if value is None else None
            if value is not None and spec.get("stated_for") and spec["stated_for"] != on:
                reason = f"measured on {on}, the goal is stated for {spec['stated_for']}"
            sentence = spec["if_absent"] if part is None and "if_absent" in spec else spec["goal"].format(**names)
            rows.append({"goal": sentence, "value": value, "threshold": threshold, "met": met,
                         "reason": reason})
    return rows
