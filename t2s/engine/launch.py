"""One run on several local processes, started from a notebook or any Python session: `train_processes`, through
accelerate's `notebook_launcher` (the command line's equivalent is `accelerate launch -m t2s train ...`).

Every process calls `t2s.engine.train.train`; they train data parallel and only the main process writes the run
directory.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Union

from accelerate import notebook_launcher
from transformers.utils import logging as hf_logging

from t2s.config import Config
from t2s.engine.train import RunResult, train
from t2s.rundir import RunDir, read_json


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
