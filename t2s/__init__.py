"""t2s: the text-to-sign ablation kit. Its Python API, the one facade of the package:

    import t2s
    cfg = t2s.load_config("baseline", "tiny", {"max_steps": 100})
    result = t2s.train(cfg, "executed/mystudy/baseline-seed0")      # -> RunResult(run_dir, summary, status)
    clips = t2s.generate(result.run_dir, ["thank you very much"])  # -> [{prompt, gif_path, clip}]
    rows = t2s.evaluate_run(result.run_dir)                         # -> logs/evaluation_metrics.csv/.json rows

The command line is `python -m t2s` (`t2s.cli`). The package's rooms: `config`, `rundir`, `data/`, `synthsign/`,
`text`, `model`, `diffusion`, `ema`, `pipeline`, `engine/`, `eval/`, `report/`, `study/`, `bench/`, `cli`. The names
above are loaded on first use, so `import t2s` does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# the API: name -> the module that defines it
API = {
    "Config": "t2s.config", "ConfigError": "t2s.config", "load_config": "t2s.config",
    "train": "t2s.engine.train", "RunResult": "t2s.engine.train",
    "generate": "t2s.pipeline", "TextToSignPipeline": "t2s.pipeline",
    "evaluate_run": "t2s.eval.evaluate",
}
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module(API[name]), name)
    raise AttributeError(f"module 't2s' has no attribute {name!r}")
