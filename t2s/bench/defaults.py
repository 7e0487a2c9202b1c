"""The benchmark's defaults and the names of its step variants: plain values, no torch, so that the command line can
show them in its help at once."""
from __future__ import annotations

from t2s.config import PROJECT_ROOT

DEFAULT_OUT = PROJECT_ROOT / "reports" / "bench"
# Per-scale defaults: (measured steps, warm-up steps, sampling steps actually run). The reference scale is costly
# on a CPU (a step is tens of seconds), so it runs fewer steps and extrapolates sampling from a few DDIM steps.
SCALE_DEFAULTS = {"micro": (3, 1, 4), "tiny": (5, 1, 10), "small": (3, 1, 4), "full": (3, 1, 4)}
QUICK_DEFAULTS = (2, 1, 2)
REFERENCE_CLIPS = 48  # synthsign clips generated for the reference scale: enough for steady-state loading
SAMPLING_TARGET_STEPS = 50  # DDIM steps a sampling time is reported for
# the step variants the benchmark can measure, by name (`--variants`)
STEP_VARIANTS: dict[str, dict] = {
    "fp32": {"mixed_precision": "no"},
    "bf16": {"mixed_precision": "bf16"},
    "channels_last": {"channels_last": True},
    "contiguous": {"channels_last": False},
    "unfused_adamw": {"fused_adamw": False},
    "fp32+contiguous": {"mixed_precision": "no", "channels_last": False},
    "fp32+contiguous+unfused": {"mixed_precision": "no", "channels_last": False, "fused_adamw": False},
    "bf16+channels_last": {"mixed_precision": "bf16", "channels_last": True},
    "compile": {"compile": True},
}
DEFAULT_STEP_VARIANTS = ["fp32", "channels_last", "unfused_adamw"]
DEFAULT_VARIANT_SCALES = ("tiny",)  # cheap there; at the reference scale each variant costs minutes on a CPU
