"""Launching training: `python -m t2s.train` (this module's `main`, also under `accelerate launch -m t2s.train` or
`torchrun -m t2s.train`, one process per GPU) and `train_processes`, the same data-parallel run started from a
notebook or any Python session through accelerate's `notebook_launcher`.

    python -m t2s.train --params FILE [--scale S] [-p key=value ...] [--run-dir DIR]

Every process calls `t2s.train.train`; they train data parallel and only the main process writes the run directory.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Optional, Union

import torch
from accelerate import notebook_launcher
from transformers.utils import logging as hf_logging

from .config import PROJECT_ROOT, Config, ConfigError, load_config
from .data import DataError
from .rundir import RunDir, read_json
from .train import RunResult, train


def free_port() -> int:
    """A TCP port free on this machine now, for a local process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_processes(config: Config, run_dir: Union[str, Path], num_processes: int = 1, progress: bool = True) -> RunResult:
    """`train` on `num_processes` local processes (one per GPU; CPU processes with gloo where there is no CUDA)
    through accelerate's `notebook_launcher`, from a notebook or any Python session; 1 calls `train` here.

    The processes are forked: nothing in this session may have created an accelerate `Accelerator` before (a run
    trained here in this kernel does), and CUDA must not be initialized yet."""
    if num_processes <= 1:
        return train(config, run_dir, progress=progress)
    notebook_launcher(_train_launched, args=(config, run_dir, progress), num_processes=num_processes,
                      use_port=str(free_port()))
    run = RunDir(run_dir)
    return RunResult(run.root, read_json(run.summary, {}) or {}, run.status or "failed")


def _train_launched(config: Config, run_dir: Union[str, Path], progress: bool) -> None:
    """One process of `train_processes`. A forked process cannot draw in a notebook: transformers' weight-loading
    bar is switched off (`progress` decides the training bar's)."""
    hf_logging.disable_progress_bar()
    train(config, run_dir, progress=progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m t2s.train",
        description="Train one variant into a run directory; under accelerate launch or torchrun, on every process.",
    )
    parser.add_argument("--params", required=True, metavar="FILE",
                        help="the variant's YAML file (params/baseline.yaml) or its name (baseline)")
    parser.add_argument("--scale", default="tiny", metavar="S",
                        help="params/scales/<S>.yaml or a YAML path, merged under --params (default tiny; 'none': no scale file)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), read as YAML")
    parser.add_argument("--run-dir", metavar="DIR", help="default: executed/<study>/<variant>-seed<seed>")
    parser.add_argument("--study", default="default", help="the study folder of the default run directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m t2s.train --params FILE [--scale S] [-p key=value ...] [--run-dir DIR]`; the same command runs data
    parallel under `accelerate launch -m t2s.train ...` or `torchrun -m t2s.train ...` (one process per GPU)."""
    args = build_parser().parse_args(argv)
    loud = int(os.environ.get("RANK", "0")) == 0  # one error message for all processes
    try:
        params = Path(args.params)
        if (params.suffix in (".yaml", ".yml") or len(params.parts) > 1) and not params.is_file():
            raise ConfigError(f"--params: params file not found: {params}")
        scale = None if args.scale.lower() == "none" else args.scale
        cfg = load_config(args.params, scale, args.param)
        run_dir = Path(args.run_dir) if args.run_dir else PROJECT_ROOT / "executed" / args.study / cfg.run_name
        result = train(cfg, run_dir, progress=not args.no_progress)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        if loud:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if loud:
        print(f"{result.status}: {result.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
