"""The command line: `python -m t2s {ablate, run, train, report, generate, evaluate, bench, doctor}`, the kit's one
parser (`accelerate launch -m t2s train ...` and `torchrun -m t2s train ...` run its `train` command on every process).

Every command checks its arguments and config before any work starts and prints one line that names the file, key
or value. The parser and those checks import no torch: each command imports what it needs when it runs, so `--help`
and a bad argument answer at once.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from t2s.arguments import device_argument, non_negative_float, positive_int, seed
from t2s.bench.command import add_options as add_bench_options
from t2s.bench.command import run_bench
from t2s.config import (DEFAULT_VARIANTS, PROJECT_ROOT, ConfigError, available, check_trackers, load_config,
                        parse_override)
from t2s.data.records import DataError

EXECUTED = PROJECT_ROOT / "executed"
REPORTS = PROJECT_ROOT / "reports"


def check_device(text: Optional[str]) -> None:
    """A --device this machine has, else a ConfigError saying what it has (torch is imported here, once the command
    runs)."""
    if text is None or not text.startswith("cuda"):
        return
    import torch

    count, index = torch.cuda.device_count(), int(text.split(":")[1]) if ":" in text else 0
    if index >= count:
        have = f"CUDA devices 0-{count - 1}" if count else "no CUDA device"
        raise ConfigError(f"--device {text}: this machine has {have}")


# --------------------------------------------------------------------------------------------- commands
OPTION_KEYS = {"epochs": "num_epochs", "data_dir": "data_dir", "seed": "seed"}  # option -> the config key it sets


def _given(args) -> dict:
    """The -p overrides as {key: value} (read as YAML, as load_config reads them)."""
    return dict(parse_override(text) for text in (args.param or []))


def _agreed(args, option: str):
    """The value of an option that sets a config key, checked against an explicit -p of that key: both given and
    different is an error naming both; the option's absence leaves the -p value (never a default over it)."""
    value, key = getattr(args, option, None), OPTION_KEYS[option]
    given = _given(args)
    if value is not None and key in given and given[key] != value:
        raise ConfigError(f"--{option.replace('_', '-')} {value} and -p {key}={given[key]} disagree: give one of them")
    return value if value is not None else given.get(key)


def _overrides(args, without: tuple = ()) -> list[str]:
    """-p overrides (less the keys `without`) plus the options that set config keys (--epochs, --data-dir), each
    checked to agree with an explicit -p of its key."""
    over = [text for text in (args.param or []) if parse_override(text)[0] not in without]
    for option in ("epochs", "data_dir"):
        if getattr(args, option, None) is not None:
            over.append(f"{OPTION_KEYS[option]}={_agreed(args, option)}")
    return over


@contextmanager
def interrupts_after_imports():
    """A Ctrl-C (SIGINT) during the block is delivered when the block ends, as the KeyboardInterrupt every command
    handles. For a command's start-up imports (torch, scipy, transformers): a Ctrl-C that landed inside an extension
    module's initialization was swallowed there (the study ran on) or left CPython's "unhandled interrupt" mark, so that
    the clean exit 130 became a death by SIGINT (tests/test_interrupts.py). Main thread, POSIX only; else a no-op."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a pending Ctrl-C is raised here


def cmd_run(args) -> int:
    """One variant, one seed, trained in this process into executed/<study>/<variant>-seed<k>/ and evaluated, so the
    run directory is the one the training notebook leaves (--no-eval: trained only)."""
    if args.no_eval and args.notebook:
        raise ConfigError("--no-eval: the training notebook always evaluates; leave out --notebook to train without "
                          "evaluating")
    seed = _agreed(args, "seed")
    seed = 0 if seed is None else seed
    cfg = load_config(args.variant, args.scale, _overrides(args, without=("seed",)) + [f"seed={seed}"])
    check_trackers(cfg)  # checked, like the config, before anything loads or is written
    run_dir = Path(args.executed_dir) / args.study / cfg.run_name

    with interrupts_after_imports():
        from t2s.engine.train import train
        from t2s.eval.evaluate import evaluate_run
        from t2s.rundir import RunDir
        from t2s.study.ablate import run_study

    if args.notebook:
        result = run_study(args.study, variants=[args.variant], seeds=[cfg.seed], scale=args.scale,
                           overrides=_overrides(args, without=("seed",)), force=args.force,
                           executed_dir=args.executed_dir, build_report=False)
        return 0 if result.ok else 1
    result = train(cfg, run_dir, progress=True)
    print(f"{result.status}: {result.run_dir}")
    if result.status == "finished" and not args.no_eval:  # as notebooks/train.ipynb does after training
        evaluate_run(result.run_dir, progress=True)
        print(f"evaluated: {RunDir(result.run_dir).evaluation_csv} and .json")
    return 0 if result.status == "finished" else 1  # interrupted (a signal, a pre-emption): resumable, not done


SLURM_OPTIONS = ("partition", "gpus_per_job", "time", "cpus_per_job", "mem", "sbatch")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def slurm_options(args):
    """The SlurmOptions of `ablate --executor slurm`; a Slurm option given with another executor is an error naming
    it (and --gpus, --submitit-folder where they do not apply)."""
    from t2s.study.executors import SlurmOptions, parse_mem_gb, parse_sbatch, parse_time_minutes

    given = [name for name in SLURM_OPTIONS if getattr(args, name, None) not in (None, [])]
    if args.executor != "slurm":
        if given:
            raise ConfigError(f"{', '.join(map(_option, given))}: Slurm option{'s' if len(given) > 1 else ''}, "
                              f"for --executor slurm (not {args.executor})")
        if args.submitit_folder and args.executor == "default":
            raise ConfigError("--submitit-folder: for --executor local or slurm (the default executor runs here)")
        if args.gpus and args.executor == "local":
            raise ConfigError("--gpus: for the default executor; --executor local runs one job at a time, seeing "
                              "this machine's GPUs (set CUDA_VISIBLE_DEVICES to choose them)")
        return None
    if args.gpus:
        raise ConfigError("--gpus: for the default executor; with --executor slurm give --gpus-per-job")
    options = {"partition": args.partition, "sbatch": parse_sbatch(args.sbatch)}
    if args.gpus_per_job is not None:
        options["gpus_per_job"] = args.gpus_per_job
    if args.time is not None:
        options["timeout_min"] = parse_time_minutes(args.time)
    if args.cpus_per_job is not None:
        options["cpus_per_job"] = args.cpus_per_job
    if args.mem is not None:
        options["mem_gb"] = parse_mem_gb(args.mem)
    return SlurmOptions(**options)


def _jobs_value(text: str):
    """argparse type of --jobs: 'auto' or a whole number of at least 1."""
    return "auto" if text == "auto" else positive_int(text)


def _jobs(value, gpus, executor: str) -> int:
    """--jobs: a number, or auto = one run per usable CPU when runs train on this machine's CPUs, else 1."""
    from t2s.engine.runtime import usable_cpus

    if value == "auto":
        return usable_cpus() if not gpus and executor == "default" else 1
    return value


def cmd_ablate(args) -> int:
    if "seed" in _given(args):
        raise ConfigError(f"-p seed={_given(args)['seed']}: a study's seeds are given with --seeds (default 0 1)")
    for variant in args.variants:  # every config checked before anything loads or is written
        check_trackers(load_config(variant, args.scale, _overrides(args)))

    with interrupts_after_imports():
        from t2s.study.ablate import run_study

    slurm = slurm_options(args)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    try:
        result = run_study(
            args.study, variants=args.variants, seeds=args.seeds, scale=args.scale, overrides=_overrides(args),
            force=args.force, gpus=gpus, executed_dir=args.executed_dir, reports_dir=args.reports_dir,
            executor=args.executor, slurm=slurm, submitit_folder=args.submitit_folder, share=not args.no_share,
            jobs=_jobs(args.jobs, gpus, args.executor), build_report=not args.no_report,
        )
    except KeyboardInterrupt:  # with submitit, run_study has said what keeps running and how to build the report
        _ignore_further_interrupts(getattr(args, "standalone", False))
        if args.executor == "default":
            print("interrupted: run the same command again to resume (finished runs are skipped, an unfinished one "
                  "resumes from its latest checkpoint)", file=sys.stderr)
        return 130
    return 0 if result.ok else 1


def cmd_report(args) -> int:
    from t2s.study.export import build_report

    folder = Path(args.executed_dir) / args.study
    if not folder.is_dir():
        found = sorted(p.name for p in Path(args.executed_dir).glob("*") if p.is_dir() and not p.name.startswith("."))
        raise ConfigError(f"no study {args.study!r}: {folder} does not exist; studies in {args.executed_dir}: "
                          f"{', '.join(found) or 'none (run python -m t2s ablate first)'}")
    path = build_report(args.study, executed_dir=args.executed_dir, reports_dir=args.reports_dir)
    print(f"report: {path}")
    return 0


def cmd_generate(args) -> int:
    for i, prompt in enumerate(args.prompts):
        if not prompt.strip():
            raise ConfigError(f"prompt {i + 1} is empty ({prompt!r}): give a caption to sign (the empty caption is the "
                              f"null caption that guidance contrasts with)")
    from t2s.pipeline import generate

    results = generate(args.run_dir, args.prompts, weights=args.weights, seed=args.seed, out_dir=args.out,
                       num_inference_steps=args.steps, guidance_scale=args.guidance)
    for r in results:
        print(f"{r['gif_path']}  <- {r['prompt']!r}")
    return 0


def cmd_evaluate(args) -> int:
    """FVD, LPIPS, SSIM/PSNR, temporal metrics, sign fidelity and cost of a finished run, raw and EMA weights (a run
    derived from another's training takes that run's rows where its evaluation settings are the same)."""
    check_device(args.device)
    from t2s.rundir import EVALUATION_COLUMNS, RunDir
    from t2s.study.derived import evaluate_or_reuse

    rows = evaluate_or_reuse(args.run_dir, num_clips=args.num_clips, weights=args.weights, device=args.device,
                        num_inference_steps=args.steps, batch_size=args.batch_size, part=args.part,
                        guidance_scale=args.guidance, fvd_num_generated=args.fvd_clips,
                        fvd_real_split=args.fvd_real_split)
    identity = {"model_name", "config_name", "weights", "timestamp", "feature_weights_sha256"}
    shown = [c for c in EVALUATION_COLUMNS if c not in identity and not c.endswith("_status")]
    for row in rows:
        print(f"{row['model_name']} [{row['weights']}]")
        for key in shown:
            value = row.get(key)
            why = row.get(f"{key}_status")
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"  {key:22s} {text}" + (f"   ({why})" if value is None and why else ""))
    print(f"written: {RunDir(Path(args.run_dir)).evaluation_paths(args.part)[0]} and .json")
    return 0


def cmd_bench(args) -> int:
    """The benchmark (`t2s.bench.command`): its step, sampling, FLOP utilization and diffusers' UNet3D, or one of its
    other modes."""
    check_device(args.device)
    return run_bench(args)


def cmd_train(args) -> int:
    """One variant into a run directory, in this process or, under `accelerate launch -m t2s train ...` or `torchrun
    -m t2s train ...`, data parallel on every process (only the main process writes the run directory)."""
    loud = int(os.environ.get("RANK", "0")) == 0  # one error message for all processes
    params = Path(args.params)
    if (params.suffix in (".yaml", ".yml") or len(params.parts) > 1) and not params.is_file():
        raise ConfigError(f"--params: params file not found: {params}")
    scale = None if args.scale.lower() == "none" else args.scale
    cfg = load_config(args.params, scale, args.param)
    check_trackers(cfg)
    run_dir = Path(args.run_dir) if args.run_dir else EXECUTED / args.study / cfg.run_name

    with interrupts_after_imports():
        import torch

        from t2s.engine.train import train

    try:
        result = train(cfg, run_dir, progress=not args.no_progress)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if loud:
        print(f"{result.status}: {result.run_dir}")
    return 0 if result.status == "finished" else 1


def cmd_doctor(args) -> int:
    """What the setup test did, better: params, data, text encoder, metric weights, devices. Exit 1 on a problem."""
    import torch

    from t2s.data.splits import build_datasets
    from t2s.eval.metrics.weights import weights_status
    from t2s.text import TextEncoder

    problems = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal problems
        problems += not ok
        print(f"  [{'ok' if ok else 'FAIL'}] {what}{': ' + detail if detail else ''}")

    print("params")
    for scale in available("scale"):
        for variant in available("variant"):
            try:
                load_config(variant, scale)
                report(True, f"{variant} @ {scale}")
            except ConfigError as exc:
                report(False, f"{variant} @ {scale}", str(exc))
    print("data")
    try:
        cfg = load_config("baseline", args.scale, _overrides(args))
        train_set, val_set, split = build_datasets(cfg)
        report(True, f"{cfg.dataset}", f"{len(train_set)} train / {len(val_set)} validation clips, "
               f"{split.get('num_skipped', 0)} skipped, split {split.get('mode')}")
    except Exception as exc:  # the doctor reports, it does not crash
        report(False, "dataset", f"{type(exc).__name__}: {exc}")
    print("text encoder")
    try:
        cfg = load_config("baseline", args.scale, _overrides(args))
        enc = TextEncoder(cfg.text_encoder, cfg.max_text_length, True)
        states, _ = enc.encode(["hello"])
        report(True, cfg.text_encoder, f"hidden size {enc.hidden_size}, loaded offline")
    except Exception as exc:
        report(False, "text encoder", f"{type(exc).__name__}: {exc}")
    print("metric weights (optional: an absent one is downloaded on first use where a network answers and T2S_OFFLINE "
          "is unset; else that metric is null with this reason)")
    for name, status in weights_status().items():  # it reports each loader's failure as a status
        tag = "ok" if status.startswith("ok") else "download" if "will be downloaded" in status else "missing"
        print(f"  [{tag}] {name}: {status}")
    print("devices")
    print(f"  torch {torch.__version__}, CUDA build {torch.version.cuda}, CUDA available: {torch.cuda.is_available()}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB")
    print(f"  CPU cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
    print("all checks passed" if not problems else f"{problems} problem(s) found")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m t2s", description="t2s: text-to-sign video diffusion ablations")
    sub = p.add_subparsers(dest="command", required=True)
    _add_ablate(sub)
    _add_run_commands(sub)
    _add_train(sub)
    _add_bench(sub)

    sp = sub.add_parser("doctor", help="check params, data, text encoder, metric weights and devices")
    _add_common(sp, study=False)
    sp.set_defaults(func=cmd_doctor)
    return p


def _add_common(sp, study=True) -> None:
    """The options every training command shares."""
    sp.add_argument("--scale", default="tiny", help="params/scales/<name>.yaml (default tiny)")
    sp.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    sp.add_argument("--epochs", type=positive_int, help="override num_epochs")
    sp.add_argument("--data-dir", help="override data_dir")
    sp.add_argument("--executed-dir", default=str(EXECUTED), help="where runs go (default executed/)")
    if study:
        sp.add_argument("--study", default="default", help="study name: executed/<study>/, reports/<study>.html")


def _add_ablate(sub) -> None:
    sp = sub.add_parser("ablate", help="run variants x seeds through the training notebook, then build the report")
    _add_common(sp)
    sp.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="params/<name>.yaml (default: the three)")
    sp.add_argument("--seeds", nargs="+", type=seed, default=[0, 1],
                    help="training seeds of every variant (default 0 1: two seeds, so every difference has an "
                         "interval)")
    sp.add_argument("--gpus", help="comma-separated GPU ids: one run per GPU at a time (default: sequential)")
    sp.add_argument("--force", action="store_true", help="rerun finished runs")
    sp.add_argument("--jobs", default="auto", type=_jobs_value,
                    help="without --gpus: runs that train at once on this machine's CPUs, each with its share of them "
                         "(default auto: one per usable CPU; 1: one after another)")
    sp.add_argument("--no-share", action="store_true",
                    help="train every run itself (default: a variant that differs from another only in keys that do "
                         "not change training, e.g. no_ema from baseline, takes that run's weights; see t2s/study/derived.py)")
    sp.add_argument("--reports-dir", default=str(REPORTS))
    sp.add_argument("--no-report", action="store_true",
                    help="run the study only; build the report later with python -m t2s report --study <study>")
    sp.add_argument("--executor", choices=["default", "local", "slurm"], default="default",
                    help="default: run here (one after another, or one per GPU with --gpus); local: each run as a "
                         "submitit job on this machine, one at a time; slurm: each run as a Slurm job (submitit)")
    sp.add_argument("--submitit-folder", help="local/slurm: the jobs' pickles and logs (default "
                                              "executed/<study>/.submitit/)")
    group = sp.add_argument_group("Slurm jobs (with --executor slurm; one job per variant x seed)")
    group.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    group.add_argument("--gpus-per-job", type=int, help="GPUs per job (default 1; 0 for CPU-only jobs)")
    group.add_argument("--time", help="time limit per job: hours (4, 0.5) or [D-]HH:MM[:SS] (default 4 hours)")
    group.add_argument("--cpus-per-job", type=int, help="CPU cores per job (default: the partition's)")
    group.add_argument("--mem", help="memory per job: 32G, 500M, or GB (default: the partition's)")
    group.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                       help="a further #SBATCH flag, e.g. --sbatch account=mylab --sbatch qos=high (repeatable)")
    sp.set_defaults(func=cmd_ablate)


def _add_run_commands(sub) -> None:
    """run, report, generate, evaluate: one run or one study at a time."""
    sp = sub.add_parser("run", help="train one variant into executed/<study>/<variant>-seed<k>/ and evaluate it")
    _add_common(sp)
    sp.add_argument("--variant", default="baseline")
    sp.add_argument("--seed", type=seed, help="training seed (default 0, or -p seed=K)")
    sp.add_argument("--notebook", action="store_true", help="run through the papermill training notebook")
    sp.add_argument("--force", action="store_true", help="with --notebook: rerun a finished run")
    sp.add_argument("--no-eval", action="store_true",
                    help="train only (default: evaluate the finished run, as the training notebook does)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("report", help="build reports/<study>.html from executed/<study>/")
    sp.add_argument("--study", default="default")
    sp.add_argument("--executed-dir", default=str(EXECUTED))
    sp.add_argument("--reports-dir", default=str(REPORTS))
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("generate", help="sample GIFs from a run for given prompts")
    sp.add_argument("run_dir")
    sp.add_argument("prompts", nargs="+")
    sp.add_argument("--weights", choices=["ema", "raw"], default="ema")
    sp.add_argument("--seed", type=seed, default=0, help="seed of the first clip (clip i: seed + i)")
    sp.add_argument("--steps", type=positive_int, help="DDIM steps (default: the run's num_inference_steps)")
    sp.add_argument("--guidance", type=non_negative_float, help="guidance scale (default: the run's)")
    sp.add_argument("--out", help="output folder (default <run_dir>/generated)")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("evaluate", help="evaluate a finished run (raw and EMA weights) into logs/evaluation_metrics.*")
    sp.add_argument("run_dir")
    sp.add_argument("--num-clips", type=positive_int, help="validation clips to generate (default: the run's eval_num_clips)")
    sp.add_argument("--weights", nargs="+", choices=["raw", "ema"], help="default: raw, and ema when the run has it")
    sp.add_argument("--steps", type=positive_int, help="DDIM steps (default: the run's num_inference_steps)")
    sp.add_argument("--batch-size", type=positive_int, help="clips sampled together (default: the run's eval_batch_size)")
    sp.add_argument("--guidance", type=non_negative_float, help="guidance scale (default: the run's)")
    sp.add_argument("--part", choices=["test", "dev"], default="test",
                    help="test: the part the report scores (default); dev: the development part, for choosing settings "
                         "(logs/evaluation_metrics_dev.*); the two share no caption and no signer")
    sp.add_argument("--fvd-clips", type=positive_int, metavar="N",
                    help="FVD/KVD's generated clips, and at most as many real ones (default: the run's "
                         "fvd_num_generated; 2048 is StyleGAN-V's protocol; docs/evaluation.md)")
    sp.add_argument("--fvd-real-split", choices=["train", "held_out"],
                    help="FVD's real clips: the training split (default, as StyleGAN-V) or the evaluation's own")
    sp.add_argument("--device", type=device_argument, help="cpu, cuda, cuda:1 (default: cuda when available)")
    sp.set_defaults(func=cmd_evaluate)


def _add_train(sub) -> None:
    sp = sub.add_parser("train", help="train one variant into a run directory (also data parallel: accelerate launch "
                                      "-m t2s train ... or torchrun -m t2s train ...)")
    sp.add_argument("--params", required=True, metavar="FILE",
                    help="the variant's YAML file (params/baseline.yaml) or its name (baseline)")
    sp.add_argument("--scale", default="tiny", metavar="S",
                    help="params/scales/<S>.yaml or a YAML path, merged under --params (default tiny; 'none': no "
                         "scale file)")
    sp.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable), read as YAML")
    sp.add_argument("--run-dir", metavar="DIR", help="default: executed/<study>/<variant>-seed<seed>")
    sp.add_argument("--study", default="default", help="the study folder of the default run directory")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)


def _add_bench(sub) -> None:
    sp = sub.add_parser("bench", help="benchmark the training step, sampling, FLOP utilization, and diffusers' UNet3D")
    add_bench_options(sp)
    sp.set_defaults(func=cmd_bench)


def _ignore_further_interrupts(standalone: bool) -> None:
    """The process is ending after a Ctrl-C and everything it wrote is consistent: a second Ctrl-C (a terminal sends
    one to the whole group, users press twice) would only turn the clean exit 130 into a traceback or a death by
    signal during the interpreter's shutdown. (Not when main is called in a process that goes on, e.g. a test.)"""
    if standalone:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None, standalone: bool = False) -> int:
    """The command line; `standalone` when the process ends as main returns (`python -m t2s`)."""
    args = build_parser().parse_args(argv)
    args.standalone = standalone
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C before or between the command's own handling of it: say so, no traceback
        _ignore_further_interrupts(standalone)
        print("interrupted: run the same command again to go on (finished work is kept, a run resumes from its "
              "newest checkpoint)", file=sys.stderr)
        return 130
    except (ConfigError, DataError, FileNotFoundError) as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # one message, not one per process of a data-parallel launch
            print(f"error: {exc}", file=sys.stderr)
        return 2
