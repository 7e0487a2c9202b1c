"""t2s: the text-to-sign ablation kit.

    import t2s
    cfg = t2s.load_config("baseline", "tiny", {"max_steps": 100})
    result = t2s.train(cfg, "executed/mystudy/baseline-seed0")      # -> RunResult(run_dir, summary, status)
    clips = t2s.generate(result.run_dir, ["thank you very much"])  # -> [{prompt, gif_path, clip}]
    rows = t2s.evaluate_run(result.run_dir)                         # -> logs/evaluation_metrics.csv/.json rows

The command line is `python -m t2s` (ablate, run, report, generate, doctor).
"""
__version__ = "0.1.0"

import warnings as _warnings  # noqa: E402

# `python -m t2s.train` (and accelerate launch / torchrun -m t2s.train) imports this package, hence t2s.train, before
# running the module as __main__; its __main__ block calls the imported copy, so runpy's warning about it is noise.
_warnings.filterwarnings("ignore", message=r"'t2s\.train' found in sys\.modules", category=RuntimeWarning)

from .config import Config, ConfigError, load_config  # noqa: E402
from .train import RunResult, train  # noqa: E402  (the function shadows the submodule name on purpose)
from .pipeline import TextToSignPipeline, generate  # noqa: E402
from .evaluate import evaluate_run  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "train", "generate", "evaluate_run", "RunResult", "TextToSignPipeline"]
