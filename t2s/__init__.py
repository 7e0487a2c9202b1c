"""t2s: the text-to-sign ablation kit.

    import t2s
    cfg = t2s.load_config("baseline", "tiny", {"max_steps": 100})
    result = t2s.train(cfg, "executed/mystudy/baseline-seed0")      # -> RunResult(run_dir, summary, status)
    clips = t2s.generate(result.run_dir, ["thank you very much"])  # -> [{prompt, gif_path, clip}]
    rows = t2s.evaluate_run(result.run_dir)                         # -> logs/evaluation_metrics.csv/.json rows

The command line is `python -m t2s` (ablate, run, report, generate, doctor).
"""
__version__ = "0.1.0"

from .config import Config, ConfigError, load_config  # noqa: E402
from .train import RunResult, generate, train  # noqa: E402  (the function shadows the submodule name on purpose)
from .evaluate import evaluate_run  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "train", "generate", "evaluate_run", "RunResult"]
