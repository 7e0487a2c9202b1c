"""How long the command line takes to answer (`python -m t2s bench --startup`): `--help`, a bad key's error, an
unknown variant's, and `import t2s`, each a fresh python process timed from start to exit (median of `repeats`).
The goal: each under 2 s, which a command that imported torch before answering could not meet on a 2-core machine."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time

import torch

from t2s.bench.timing import load_average, machine_info
from t2s.config import PROJECT_ROOT

COMMANDS = {
    "python -m t2s --help": [sys.executable, "-m", "t2s", "--help"],
    "a bad key's error (python -m t2s run -p bogus_key=1)": [sys.executable, "-m", "t2s", "run", "-p", "bogus_key=1"],
    "an unknown variant's error (python -m t2s ablate --variants nope)": [sys.executable, "-m", "t2s", "ablate",
                                                                         "--variants", "nope"],
    "import t2s": [sys.executable, "-c", "import t2s"],
}
GOAL_SECONDS = 2.0


def measure_startup(repeats: int = 5) -> dict:
    """{command: {seconds: [...], median_s, exit_code}} and the goal, on this machine."""
    start_load = load_average()
    found = {}
    for label, command in COMMANDS.items():
        seconds, code = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            code = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True).returncode
            seconds.append(time.perf_counter() - t0)
        found[label] = {"seconds": seconds, "median_s": statistics.median(seconds), "exit_code": code}
    return {"machine": machine_info(torch.device("cpu")), "load_average": {"start": start_load, "end": load_average()},
            "repeats": repeats, "goal_s": GOAL_SECONDS, "commands": found}


def to_markdown(result: dict) -> str:
    cpu = result["machine"].get("cpu", "this machine")
    lines = ["# Command-line startup: `python -m t2s bench --startup`", "",
             f"{cpu}; median of {result['repeats']} fresh processes each, load average "
             f"{', '.join(f'{v:.2f}' for v in result['load_average']['start'] or [])} at the start.", "",
             "| command | median (s) | all (s) | exit code |", "| --- | ---: | --- | ---: |"]
    for label, entry in result["commands"].items():
        lines.append(f"| {label} | {entry['median_s']:.2f} | {', '.join(f'{s:.2f}' for s in entry['seconds'])} | "
                     f"{entry['exit_code']} |")
    worst = max(e["median_s"] for e in result["commands"].values())
    lines += ["", f"Goal: each under {result['goal_s']:g} s: {'met' if worst < result['goal_s'] else 'NOT met'} "
                  f"(slowest median {worst:.2f} s)."]
    return "\n".join(lines) + "\n"
