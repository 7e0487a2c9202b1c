"""Files collaborators can read: everything a run writes has the mode the user's umask gives an ordinary file (and
folders the mode it gives a folder), atomic writes through private temporary files included."""
from __future__ import annotations

import os
import stat

import pytest

from t2s.config import load_config
from t2s.engine.train import train
from t2s.eval.evaluate import evaluate_run
from t2s.rundir import RunDir, file_mode, umask

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_metric_weights")


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_file_of_a_micro_run_has_the_umasks_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert umask() == mask and file_mode() == 0o666 & ~mask
        cfg = load_config("baseline", "micro", {"data_dir": str(tmp_path / "synthsign"), "max_steps": 4,
                                                "keep_optimizer_state": True, "bt_train_frames": 400, "bt_epochs": 2})
        run = RunDir(train(cfg, tmp_path / "run", progress=False).run_dir)
        evaluate_run(run.root, progress=False)
    finally:
        os.umask(old)
    paths = [p for p in tmp_path.rglob("*") if not p.is_symlink()]
    files = [p for p in paths if p.is_file()]
    assert len(files) > 30 and any(p.suffix == ".pt" for p in files) and any(p.suffix == ".gif" for p in files)
    wrong = [f"{p.relative_to(tmp_path)}: {oct(stat.S_IMODE(p.stat().st_mode))}" for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o666 & ~mask]
    wrong += [f"{p.relative_to(tmp_path)}/: {oct(stat.S_IMODE(p.stat().st_mode))}" for p in paths
              if p.is_dir() and stat.S_IMODE(p.stat().st_mode) != 0o777 & ~mask]
    assert not wrong, "\n".join(wrong)
