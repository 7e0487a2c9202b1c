"""How long would the quickstart take here? `python -m t2s bench --study-estimate [--label avx2-fp32] [-p KEY=VALUE]`.

Times a short, representative slice and extrapolates, instead of running the study:
* the plan is the quickstart's (`python -m t2s ablate --study quickstart`): the default variants × seeds 0 1 at the
  tiny scale, with `ablate`'s sharing (a run whose training another does is derived from it) and `ablate`'s jobs
  (one run per usable CPU, each with its share of them and passive OpenMP waiting);
* `jobs` worker processes start at once, as ablate's runs do, each with the study's settings (`overrides` on top of
  the tiny scale; e.g. mixed_precision=no for fp32), and time: building the engine (data from the synthsign cache,
  rendered first if absent; models; text encoder), `steps` optimizer steps after two warm-up steps, one held-out loss
  (the training's validation, raw weights), one batch of evaluation sampling (`eval_batch_size` clips,
  `num_inference_steps` DDIM steps with guidance);
* a trained run = setup + total_steps x step + the validations' held-out losses (step 0 once, then raw and EMA at
  every `validation_points`) + its evaluation
  (weight sets x the evaluation clips' batches x batch time, and weight sets x 2 (own and other captions) held-out
  losses) + `FIXED_RUN_S` (kernel start, imports, the recognizer from its cache, metrics, writing: the profile's
  measured remainder); a derived run costs `DERIVED_RUN_S`; the study = the trained runs in rounds of `jobs`, the
  derived runs shared out over the jobs, then `REPORT_S` for the report.
The constants come from the quickstart's phase profile (`bench --profile`, reports/bench/profile-*.md): what a slice
cannot time. The estimate is printed with its parts and written to reports/bench/study-estimate-<label>.* and bench.md.
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from t2s.bench.step import endless_batches
from t2s.bench.timing import cpu_model, start_worker, worker_result
from t2s.config import DEFAULT_VARIANTS, load_config, parse_override
from t2s.engine.runtime import computing, share_cpus_env, usable_cpus
from t2s.engine.step import Engine
from t2s.pipeline import TextToSignPipeline
from t2s.study.runs import EXECUTED_DIR, plan_study

SEEDS = (0, 1)
SCALE = "tiny"
FIXED_RUN_S = 27.0  # per trained run, outside the timed parts (the quickstart's profile, avx2-fp32, efb446f):
# papermill and the kernel starting 3 s, imports 1-2 s, the training cell's own work 6-8 s, the samples 4 s,
# checkpoints 1-7 s, the evaluation's setup, metrics and writing 5 s
DERIVED_RUN_S = 12.0  # a derived run, papermill included: its notebook reuses the provider's training and raw evaluation
REPORT_S = 15.0  # the analysis notebook and the HTML export (profile: 12-17 s)


def worker(overrides: list, steps: int, scale: str = SCALE) -> dict:
    """Time one slice (see the module docstring) of the baseline at `scale` with `overrides` (KEY=VALUE)."""
    with computing() as threads:
        return _slice(overrides, steps, scale, threads)


def _slice(overrides: list, steps: int, scale: str, threads: int) -> dict:
    cfg = load_config("baseline", scale, dict(parse_override(o) for o in overrides))
    start = time.perf_counter()
    engine = Engine(cfg, cpu=True)
    setup = time.perf_counter() - start
    batches = endless_batches(engine)
    for _ in range(2):
        engine.train_step(batches)
    start = time.perf_counter()
    for _ in range(steps):
        engine.train_step(batches)
    step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    engine.held_out_loss()
    validation = time.perf_counter() - start
    pipe = TextToSignPipeline.from_config(engine.model, engine.accelerator.unwrap_model(engine.text), cfg)
    prompts = ["hello my name is anna"] * cfg.eval_batch_size
    with torch.no_grad():
        pipe(prompts[:1], seeds=[0], num_inference_steps=1, guidance_scale=cfg.guidance_scale)  # warm-up
        start = time.perf_counter()
        pipe(prompts, seeds=range(len(prompts)), num_inference_steps=cfg.num_inference_steps,
             batch_size=cfg.eval_batch_size, guidance_scale=cfg.guidance_scale, eta=cfg.eta)
        batch = time.perf_counter() - start
    return {"setup_s": setup, "step_s": step, "validation_s": validation, "eval_batch_s": batch, "threads": threads,
            "total_steps": engine.total_steps, "steps_per_epoch": engine.steps_per_epoch,
            "eval_num_clips": cfg.eval_num_clips, "eval_batch_size": cfg.eval_batch_size,
            "use_ema": cfg.use_ema, "mixed_precision": cfg.mixed_precision, "validate_every": cfg.validate_every,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def validation_points(total_steps: int, steps_per_epoch: int, validate_every: int) -> int:
    """The training's validations: step 0, the end of every validate_every-th whole epoch, and the last step."""
    epochs = [e * steps_per_epoch for e in range(1, total_steps // steps_per_epoch + 1) if e % validate_every == 0]
    return 1 + len(epochs) + (total_steps not in epochs)


WORKER_CODE = ("import json, sys; from t2s.bench.estimate import worker; "
               "print(json.dumps(worker(json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))")


def _plan(overrides: list, scale: str = SCALE) -> tuple[int, int]:
    """(trained runs, derived runs) of the quickstart's plan (`ablate`'s own `plan_study`) with these overrides."""
    plans = plan_study("quickstart", DEFAULT_VARIANTS, SEEDS, scale, dict(parse_override(o) for o in overrides),
                       EXECUTED_DIR)
    derived = sum(bool(p.parameters["weights_from"]) for p in plans)
    return len(plans) - derived, derived


def estimate_study(overrides: list, steps: int = 8, jobs: int = 0, scale: str = SCALE) -> dict:
    """The quickstart's estimated wall time on this machine (module docstring), with the slice's measurements
    (`scale`: the quickstart's tiny; the tests use micro)."""
    jobs = jobs or usable_cpus()
    started = time.perf_counter()
    processes = [start_worker(WORKER_CODE, [json.dumps(list(overrides)), steps, scale], share_cpus_env(jobs))
                 for _ in range(jobs)]
    workers = [worker_result(p, "study-estimate") for p in processes]
    slice_s = time.perf_counter() - started
    w = {k: max(x[k] for x in workers) for k in ("setup_s", "step_s", "validation_s", "eval_batch_s")}  # the slower
    first = workers[0]
    trained, derived = _plan(overrides, scale)
    weight_sets = 2 if first["use_ema"] else 1
    validations = validation_points(first["total_steps"], first["steps_per_epoch"], first["validate_every"])
    parts = {
        "setup": w["setup_s"],
        "steps": first["total_steps"] * w["step_s"],
        "validation": (1 + (validations - 1) * weight_sets) * w["validation_s"],  # step 0: the EMA is the weights
        "evaluation sampling": weight_sets * math.ceil(first["eval_num_clips"] / first["eval_batch_size"])
        * w["eval_batch_s"],
        "evaluation held-out loss": weight_sets * 2 * w["validation_s"],
        "fixed (profile)": FIXED_RUN_S,
    }
    per_run = sum(parts.values())
    rounds = math.ceil(trained / jobs)
    study = rounds * per_run + math.ceil(derived / jobs) * DERIVED_RUN_S + REPORT_S
    return {"overrides": list(overrides), "jobs": jobs, "slice_steps": steps, "slice_wall_s": slice_s,
            "workers": workers, "per_trained_run": parts, "per_trained_run_s": per_run, "trained_runs": trained,
            "derived_runs": derived, "rounds": rounds, "validations_per_run": validations,
            "study_s": study, "cpu": cpu_model(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "environment": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}}


def to_markdown(result: dict, label: str) -> str:
    first = result["workers"][0]
    env = ", ".join(f"{k}={v}" for k, v in result["environment"].items() if v) or "none"
    lines = [f"## Quickstart estimate: {label}", "",
             f"- `python -m t2s bench --study-estimate --label {label}"
             + "".join(f" -p {o}" for o in result["overrides"]) + f"`, {result['measured']}; CPU: {result['cpu']}; "
             f"kernels {first['cpu_capability']} (emulation: {env}); mixed precision {first['mixed_precision']}",
             f"- slice: {result['jobs']} workers at once ({first['threads']} thread(s) each, as ablate runs them), "
             f"{result['slice_steps']} steps after 2 warm-up, one held-out loss, one evaluation batch: "
             f"{result['slice_wall_s']:.0f} s; per worker (slower of the two): step "
             f"{max(x['step_s'] for x in result['workers']) * 1000:.0f} ms, held-out loss "
             f"{max(x['validation_s'] for x in result['workers']):.1f} s, evaluation batch of {first['eval_batch_size']} "
             f"{max(x['eval_batch_s'] for x in result['workers']):.1f} s, setup "
             f"{max(x['setup_s'] for x in result['workers']):.1f} s",
             "", "| part of a trained run | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["per_trained_run"].items()]
    lines += [f"| **a trained run** | **{result['per_trained_run_s']:.0f}** |", "",
              f"Study: {result['trained_runs']} trained runs in {result['rounds']} rounds of {result['jobs']} "
              f"+ {result['derived_runs']} derived runs ({DERIVED_RUN_S:.0f} s each, shared out) + the report "
              f"({REPORT_S:.0f} s) = **{result['study_s'] / 60:.1f} min** (install excluded; the synthsign data and "
              f"the recognizer from their caches: a fresh clone renders the data in each first run and trains the "
              f"recognizer once, in ablate beside the first runs: about half its 35 s on 2 cores).", ""]
    return "\n".join(lines)
