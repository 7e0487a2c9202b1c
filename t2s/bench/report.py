"""The benchmark's outputs: `reports/bench/bench.json` (the whole result) and `bench.md` (machine, load average at
start and end, one section per scale with its phase table, its model table, sampling and the step variants, the
race, the goals with met / not met), both written atomically."""
from __future__ import annotations

import json
from pathlib import Path

from t2s.bench.timing import PHASES
from t2s.rundir import atomic_write_bytes


def _fmt(x, spec=".1f", none="—"):
    return none if x is None else format(x, spec)


def _si(x, unit="FLOP/s"):
    if x is None:
        return "—"
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= p:
            return f"{x / p:.1f} {s}{unit}"
    return f"{x:.0f} {unit}"


def _header(result: dict) -> list[str]:
    m, s = result["machine"], result["settings"]
    lines = [
        "# t2s benchmark",
        "",
        f"- when: {result['started_at']} ({result['duration_s']:.0f} s)",
        f"- machine: {m['gpu'] or m['cpu']}; {m['cores']} cores ({m['usable_cores']} usable, torch threads "
        f"{m['torch_threads']}); torch {m['torch']}; diffusers {m['diffusers']}; device {m['device']}",
        f"- load average (1, 5, 15 min): start {result['load_average']['start']}, end {result['load_average']['end']} "
        f"(runnable threads at start {result['load_average'].get('runnable_at_start')}, at end "
        f"{result['load_average'].get('runnable_at_end')}, this process included)",
        f"- environment: {json.dumps(m.get('env', {}))}",
        f"- settings: {json.dumps(s)}",
    ]
    if result.get("warning"):
        lines.append(f"- **warning**: {result['warning']}")
    return lines + [""]


def _phase_table(res: dict) -> list[str]:
    names = list(res["models"])
    models = res["models"]
    lines = ["| phase | " + " | ".join(f"{models[n]['name']} ms | share" for n in names) + " |",
             "|---|" + "---:|---:|" * len(names)]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(
            f"{models[n]['phases'][phase]['mean_ms']:.1f} | {100 * models[n]['phases'][phase]['share']:.1f}%"
            for n in names) + " |")
    lines.append("| residual (untimed) | " + " | ".join(
        f"{models[n]['residual_ms']:.2f} | {100 * models[n]['residual_share']:.2f}%" for n in names) + " |")
    lines.append("| **step (measured)** | " + " | ".join(f"**{models[n]['step_ms']['mean']:.1f}** | 100%" for n in names) + " |")
    return lines


MODEL_ROWS = [
    ("parameters", lambda r: f"{r['parameters'] / 1e6:.3f} M"),
    ("steps measured (+ warm-up)", lambda r: f"{r['steps']} (+{r['warmup_steps']})"),
    ("step ms median / min / mean / max", lambda r: f"{r['step_ms']['median']:.0f} / {r['step_ms']['min']:.0f} / "
                                                    f"{r['step_ms']['mean']:.0f} / {r['step_ms']['max']:.0f}"),
    ("clips / s", lambda r: f"{r['clips_per_s']:.2f}"),
    ("peak memory (process)", lambda r: f"{r['peak_memory']['peak_gb']:.2f} GB ({r['peak_memory']['kind']})"),
    ("peak memory rise during the steps", lambda r: f"{r['peak_memory']['increase_gb']:.2f} GB"),
    ("FLOPs per step (fwd+bwd)", lambda r: _si(r["flops_per_step"], "FLOP")),
    ("achieved FLOP/s (whole step)", lambda r: _si(r["step"]["achieved_flops_per_s"])),
    ("matmul peak", lambda r: f"{_si(r['matmul_peak_flops_per_s'])} ({r['matmul_peak_dtype']})"),
    ("MFU (whole step)", lambda r: f"{100 * r['step']['mfu']:.1f}%"),
    ("MFU (forward+backward only)", lambda r: f"{100 * r['forward_backward']['mfu']:.1f}%"),
    ("load average 1 min before / after the steps; runnable threads sampled",
     lambda r: f"{_fmt((r['load_during']['before'] or [None])[0], '.2f')} / "
               f"{_fmt((r['load_during']['after'] or [None])[0], '.2f')}; {r['load_during']['runnable_samples']}"),
    ("EMA + data + text at config (amortized share)",
     lambda r: f"{100 * sum(r['amortized']['shares'][k] for k in ('ema', 'data', 'text')):.2f}%"),
]


def _model_table(res: dict) -> list[str]:
    names = list(res["models"])
    lines = ["", "| | " + " | ".join(res["models"][n]["name"] for n in names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(fn(res["models"][n]) for n in names) + " |" for label, fn in MODEL_ROWS]
    if "diffusers" in res["models"]:
        d = res["models"]["diffusers"]
        lines += ["", f"diffusers UNet3DConditionModel at matched parameters ({100 * (d['parameter_ratio'] - 1):+.1f}%): "
                  f"`{json.dumps(d['architecture'])}`. t2s step speed-up over it: **{d['t2s_speedup_median']:.2f}x** "
                  f"(median steps; {d['t2s_speedup_min']:.2f}x from the fastest, {d['t2s_speedup']:.2f}x on the mean)."]
    sp = res["sampling"]
    lines += ["", f"Sampling one clip (DDIM, {sp['target_steps']} steps, guidance {sp['guidance_scale']}, t2s): "
              f"**{sp['seconds_at_target']:.1f} s** ({sp['method']}; {sp['per_step_mean_ms']:.0f} ms per step; the "
              f"denoiser in {_precision(sp.get('precision', 'no'))})."]
    if sp.get("float32"):
        fp = sp["float32"]
        lines[-1] += (f" In float32: {fp['seconds_at_target']:.1f} s ({fp['per_step_mean_ms']:.0f} ms per step), so "
                      f"{sp.get('precision')} sampling is {fp['seconds_at_target'] / sp['seconds_at_target']:.2f}x "
                      f"faster here.")
    return lines


def _precision(precision: str) -> str:
    return "float32" if precision == "no" else f"{precision} autocast"


def _variant_table(res: dict) -> list[str]:
    if not res["variants"]:
        return []
    base, d, vd = res["models"]["t2s"], res["models"].get("diffusers"), res.get("variants_diffusers") or {}
    lines = ["", "Step variants of the t2s engine step (what a change to the engine or the model would buy):", "",
             "| variant | step ms | speed-up | forward_backward ms | optimizer ms | MFU (vs peak of its dtype) "
             "| peak memory rise | diffusers step ms, same options | t2s speed-up over diffusers |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| as the engine | {base['step_ms']['mean']:.0f} | 1.00x | {base['phases']['forward_backward']['mean_ms']:.0f} "
             f"| {base['phases']['optimizer']['mean_ms']:.1f} | {100 * base['step']['mfu']:.1f}% ({base['matmul_peak_dtype']}) "
             f"| {base['peak_memory']['increase_gb']:.2f} GB | {_fmt(d and d['step_ms']['mean'], '.0f')} "
             f"| {_fmt(d and d['t2s_speedup'], '.2f')}x |"]
    for v, r in res["variants"].items():
        theirs = vd.get(v)
        lines.append(f"| {v} | {r['step_ms']['mean']:.0f} | {r['speedup_vs_t2s']:.2f}x | "
                     f"{r['phases']['forward_backward']['mean_ms']:.0f} | {r['phases']['optimizer']['mean_ms']:.1f} | "
                     f"{100 * r['step']['mfu']:.1f}% ({r['matmul_peak_dtype']}) | {r['peak_memory']['increase_gb']:.2f} GB "
                     f"| {_fmt(theirs and theirs['step_ms']['mean'], '.0f')} "
                     f"| {_fmt(r.get('t2s_speedup_vs_diffusers_same_options'), '.2f')}x |")
    return lines


def _race(r: dict) -> list[str]:
    lines = [f"## Race: {r['budget_s']:.0f} s of training each at {r['scale']}, same data and optimizer", "",
             "| model | parameters | steps | train s | ms / step | held-out loss | held-out loss, EMA weights "
             "| train loss, last 10 steps |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in r["contenders"].items():
        lines.append(f"| {name} | {c['parameters'] / 1e6:.3f} M | {c['steps']} | {c['train_seconds']:.1f} | "
                     f"{c['step_ms_mean']:.0f} | {c['held_out_loss']:.4f} | {_fmt(c.get('held_out_loss_ema'), '.4f')} "
                     f"| {_fmt(c.get('train_loss_last10_mean'), '.4f')} |")
    return lines + ["", f"Held-out loss: {r['held_out_definition']}.", ""]


def _goals(goals: list[dict]) -> list[str]:
    lines = ["## Goals", "", "| goal | value | threshold | met |", "|---|---:|---:|---|"]
    for g in goals:
        met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
        if g["reason"]:
            met += f" ({g['reason']})"
        lines.append(f"| {g['goal']} | {_fmt(g['value'], '.4g')} | {g['threshold']} | {met} |")
    return lines + [""]


def to_markdown(result: dict) -> str:
    lines = _header(result)
    for scale, res in result["scales"].items():
        c = res["config"]
        lines += [f"## {scale}: {c['image_size']}x{c['image_size']}, {c['num_frames']} frames, batch {c['batch_size']}, "
                  f"mixed precision {res['mixed_precision']}", ""]
        lines += _phase_table(res) + _model_table(res) + _variant_table(res) + [""]
    if result.get("race"):
        lines += _race(result["race"])
    return "\n".join(lines + _goals(result["goals"]))


SECTIONS_MARK = "<!-- sections: written by bench --profile / --study-estimate and speed-changes.md; kept by bench -->"
# bench.md's sections after the step benchmark, each its own file in reports/bench, in this order
SECTION_FILES = ("speed-changes.md", "profile-native.md", "profile-avx2-fp32.md", "study-estimate-native.md",
                 "study-estimate-avx2-fp32.md")


def refresh_sections(out_dir: Path) -> Path:
    """bench.md: its step benchmark (the text before SECTIONS_MARK), then every section file of `out_dir` there is
    (SECTION_FILES first, then any other profile-* / study-estimate-* file)."""
    out_dir = Path(out_dir)
    md_path = out_dir / "bench.md"
    head = md_path.read_text(encoding="utf-8").split(SECTIONS_MARK)[0].rstrip() if md_path.is_file() else "# t2s benchmark"
    names = list(SECTION_FILES) + sorted(p.name for p in out_dir.glob("*.md") if p.name not in SECTION_FILES
                                         and p.name.startswith(("profile-", "study-estimate-")))
    sections = [(out_dir / n).read_text(encoding="utf-8").strip() for n in names if (out_dir / n).is_file()]
    atomic_write_bytes(md_path, "\n\n".join([head, SECTIONS_MARK, *sections]).encode("utf-8") + b"\n")
    return md_path


def write_outputs(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    atomic_write_bytes(json_path, json.dumps(result, indent=2, default=str).encode("utf-8"))
    atomic_write_bytes(md_path, to_markdown(result).encode("utf-8"))
    refresh_sections(out_dir)
    return json_path, md_path
