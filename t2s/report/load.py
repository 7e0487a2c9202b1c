"""Loading run directories: what a metric is, a run, a study, and each finished run's metric values.

A run directory (`executed/<study>/<variant>-seed<k>/`, see README) is the only thing read, so a report can be rebuilt
from a copied `executed/` folder. Every value a run could not produce stays missing (NaN / null) with its reason.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import pandas as pd

from t2s.config import DEFAULT_VARIANTS
from t2s.rundir import FAILURES_FILE, STUDY_FILE, RunDir, finite_number

BASELINE = "baseline"
RUN_NAME = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)$")


# ----------------------------------------------------------------------------------------------- what a metric is
# How a metric may be used in a finding (README, "Statistics"):
#   exploratory  compared between variants, Holm-adjusted within its question
#   pixel        SSIM / PSNR / LPIPS against the real clip: exploratory under a random split; descriptive under a
#                signer-disjoint split, where the real clip shows a signer the model never saw
#   descriptive  shown with its difference, never given a verdict (the reason says why)
@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: Optional[str]  # "lower", "higher", or None where neither direction is better
    source: str  # "training" (summary.json) or "evaluation" (logs/evaluation_metrics.csv)
    role: str = "exploratory"  # "exploratory", "pixel" or "descriptive"
    why: str = ""  # for descriptive metrics: why no verdict

    @property
    def title(self) -> str:
        return self.label + {"lower": " ↓", "higher": " ↑"}.get(self.better, "")


ONE_BATCH = "the loss of a single mini-batch: too noisy to decide anything"
COST = ("a cost measured on a shared machine: a description of this hardware, not of the method (runs that ran at "
        "once shared the CPUs, and with ablate's jobs the first ones also shared them with the back-translation "
        "recognizer's training)")
NO_DIRECTION = "neither direction is better"
CONTROL = "the control of the DTW gap, not a quality"
DIAGNOSTIC = ("whether the denoiser uses the text at all, not what it signs: back-translation and the DTW gap judge "
              "that")
SAME_READING = "the same recognizer readings as back-translation BLEU-4, which is the one judged (fewer tests, more power)"
# The default primary metric: the held-out loss on the evaluation's test part of the weights a variant would ship (EMA
# where it keeps one, raw otherwise). A variant file may name another (`primary_metric`). The training's validation
# loss (summary.json, the curves) reads the development part and is not compared.
PRIMARY = "val_loss"
# the held-out loss of each weight set, read from that weight set's evaluation row (the test part)
WEIGHT_SET_LOSSES = {"val_loss_raw": "raw", "val_loss_ema": "ema"}
TRAINING_METRICS = (
    Metric("final_loss", "final training loss", None, "training", "descriptive", ONE_BATCH),
    Metric("min_loss", "minimum training loss", None, "training", "descriptive", ONE_BATCH),
    Metric("train_time_hours", "training time (h)", "lower", "training", "descriptive", COST),
    Metric("peak_memory_gb", "peak memory (GB)", "lower", "training", "descriptive", COST),
    Metric("clips_per_s", "throughput (clips/s)", "higher", "training", "descriptive", COST),
    Metric("num_parameters_millions", "parameters (M)", None, "training", "descriptive", NO_DIRECTION),
)
# back-translation (t2s.eval.evaluate, "Back-translation"): caption groups, and each score's label and direction
BT_GROUP_LABELS = {"unseen": "unseen captions (novel + paraphrased)", "novel": "novel captions",
             "paraphrase": "paraphrased captions", "seen": "seen captions"}
BT_SCORE_LABELS = (("bleu4", "BLEU-4", "higher"), ("wer", "WER", "lower"), ("exact", "exact sequence", "higher"))
EVALUATION_METRICS = (  # the columns of t2s.eval.evaluate's logs/evaluation_metrics.csv, with the way they are read
    Metric("val_loss", "held-out loss, test part (deployed weights)", "lower", "evaluation"),
    Metric("val_loss_raw", "held-out loss, test part, raw weights", "lower", "evaluation"),
    Metric("val_loss_ema", "held-out loss, test part, EMA weights", "lower", "evaluation"),
    *(Metric(f"bt_{score}_{group}", f"back-translation {label}, {words}", better, "evaluation",
             *(() if score == "bleu4" else ("descriptive", SAME_READING)))
      for group, words in BT_GROUP_LABELS.items() for score, label, better in BT_SCORE_LABELS),
    Metric("dtw_gap", "text-following gap (DTW, shuffled − matched captions)", "higher", "evaluation"),
    Metric("dtw_gap_unseen", "text-following gap (DTW), unseen captions (novel + paraphrased)", "higher", "evaluation"),
    Metric("dtw_gap_seen", "text-following gap (DTW), seen captions", "higher", "evaluation"),
    Metric("dtw_error", "DTW hand error", "lower", "evaluation"),
    Metric("dtw_error_shuffled", "DTW hand error, shuffled captions (control)", None, "evaluation", "descriptive",
           CONTROL),
    Metric("hand_detection_rate", "hand detection rate", "higher", "evaluation"),
    Metric("caption_dependence", "caption dependence (% of the held-out loss the right caption saves)", "higher",
           "evaluation", "descriptive", DIAGNOSTIC),
    Metric("val_loss_other_caption", "held-out loss with another clip's caption (control)", None, "evaluation",
           "descriptive", "the control of caption dependence, not a quality"),
    Metric("fvd", "FVD", "lower", "evaluation"),
    Metric("kvd", "KVD", "lower", "evaluation"),
    Metric("lpips", "LPIPS", "lower", "evaluation", "pixel"),
    Metric("ssim", "SSIM", "higher", "evaluation", "pixel"),
    Metric("psnr", "PSNR (dB)", "higher", "evaluation", "pixel"),
    Metric("temporal_consistency", "temporal consistency (1 = frozen clip)", None, "evaluation", "descriptive",
           NO_DIRECTION),
    Metric("temporal_consistency_real", "temporal consistency of the real clips", None, "evaluation", "descriptive",
           NO_DIRECTION),
    Metric("motion_magnitude", "motion magnitude", None, "evaluation", "descriptive", NO_DIRECTION),
    Metric("motion_magnitude_real", "motion magnitude of the real clips", None, "evaluation", "descriptive",
           NO_DIRECTION),
    Metric("inference_time_ms", "inference time (ms)", "lower", "evaluation", "descriptive", COST),
    Metric("inference_memory_gb", "inference memory (GB)", "lower", "evaluation", "descriptive", COST),
)
# Columns of evaluation_metrics.csv that are not metrics, or repeat one summary.json already gives.
EVALUATION_NON_METRICS = {"model_name", "config_name", "weights", "timestamp", "num_clips", "num_parameters_millions",
                          "fvd_judged", "fvd_num_generated", "fvd_num_real", "fvd_real_set", "dtw_clips",
                          "feature_extractor", "feature_weights_sha256", "bt_recognizer", "eval_part", "eval_signers",
                          "num_inference_steps", "guidance_scale"}
# Columns that qualify another one (an interval's bounds, a spread): shown beside it, never compared on their own.
# (_ceiling / _floor: back-translation's bounds, the same real clips and shuffled references for every variant)
EVALUATION_QUALIFIERS = ("_low", "_high", "_std", "_ceiling", "_floor")


# ----------------------------------------------------------------------------------------------- loading runs
@dataclass
class Run:
    """One run directory, read leniently: a missing or unreadable file is an empty table and a noted problem."""

    name: str
    variant: str
    seed: int
    folder: Path
    notebook: Path
    status: str  # metadata status, or "failed" (failures.json), "incomplete" (no metadata yet), "not started"
    error: Optional[str]
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)
    memory: pd.DataFrame = field(default_factory=pd.DataFrame)
    evaluation: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def deployed_weights(self) -> str:
        """The weights this variant would ship: its EMA if it keeps one, else the raw weights."""
        if "use_ema" in self.config:
            return "ema" if self.config["use_ema"] else "raw"
        weights = set(self.evaluation["weights"].astype(str)) if "weights" in self.evaluation else set()
        return "ema" if "ema" in weights or finite_number(self.summary.get("val_loss_ema")) is not None else "raw"


def _read_json(path: Path, problems: list, default):
    """The file's JSON if it is of the default's type; the default (and a noted problem) otherwise."""
    if not path.is_file():
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
        return default
    if not isinstance(data, type(default)):
        problems.append(f"{path.name}: expected a JSON {type(default).__name__}, found {type(data).__name__}")
        return default
    return data


def _read_csv(path: Path, problems: list) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
        return pd.DataFrame()
    if "step" in frame:  # a resumed run logs the steps after its checkpoint again: keep the latest row per step
        frame = frame.dropna(subset=["step"]).drop_duplicates("step", keep="last").sort_values("step")
    if "timestamp" in frame:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], errors="coerce", format="ISO8601", utc=True)
    return frame.reset_index(drop=True)


def load_run(folder: Union[str, Path], notebook: Optional[Path] = None, failure: Optional[dict] = None) -> Run:
    """Read one run directory. `failure` is its entry in the study's failures.json, if any."""
    folder = Path(folder)
    problems: list = []
    paths = RunDir(folder)
    config = _read_json(paths.config, problems, {})
    metadata = _read_json(paths.metadata, problems, {})
    match = RUN_NAME.match(folder.name)
    variant = config.get("variant") or (match["variant"] if match else folder.name)
    seed = config.get("seed", int(match["seed"]) if match else 0)

    status = metadata.get("status") or ("incomplete" if folder.is_dir() else "not started")
    error = metadata.get("error")
    if failure and status != "finished":
        status, error = "failed", error or f"{failure.get('ename')}: {failure.get('evalue')}"

    return Run(
        name=folder.name,
        variant=variant,
        seed=int(seed),
        folder=folder,
        notebook=notebook or paths.notebook,
        status=status,
        error=error,
        config=config,
        metadata=metadata,
        summary=_read_json(paths.summary, problems, {}),
        training=_read_csv(paths.training_csv, problems),
        validation=_read_csv(paths.validation_csv, problems),
        memory=_read_csv(paths.memory_csv, problems),
        evaluation=_read_csv(paths.evaluation_csv, problems),
        samples=_read_json(paths.samples_json, problems, []),
        problems=problems,
    )


@dataclass
class Study:
    name: str
    folder: Path
    runs: list  # every run found, any status, ordered by variant then seed
    variants: list  # expected variants (study.json) and any found, in order
    expected: list  # (variant, seed) pairs study.json asked for; empty when unknown
    failures: dict  # failures.json: run name -> {ename, evalue, traceback, notebook, ...}
    problems: list = field(default_factory=list)  # unreadable study files

    @property
    def finished_runs(self) -> list:
        return [r for r in self.runs if r.finished]

    @property
    def unfinished_runs(self) -> list:
        return [r for r in self.runs if not r.finished]

    @property
    def missing(self) -> list:
        """Run names asked for (study.json) with neither a run folder nor a notebook."""
        present = {r.name for r in self.runs}
        return [f"{v}-seed{s}" for v, s in self.expected if f"{v}-seed{s}" not in present]

    @property
    def is_partial(self) -> bool:
        return bool(self.unfinished_runs or self.missing or self.variants_without_results)

    @property
    def variants_with_results(self) -> list:
        done = {r.variant for r in self.finished_runs}
        return [v for v in self.variants if v in done]

    @property
    def variants_without_results(self) -> list:
        return [v for v in self.variants if v not in self.variants_with_results]

    def runs_of(self, variant: str) -> list:
        return [r for r in self.finished_runs if r.variant == variant]

    @cached_property
    def values(self) -> pd.DataFrame:
        """run_metrics(self), computed once: one row per finished run, one column per metric."""
        return run_metrics(self)


def variant_order(names: Iterable[str], first: Sequence[str] = DEFAULT_VARIANTS) -> list:
    names = list(dict.fromkeys(names))
    return [v for v in first if v in names] + sorted(v for v in names if v not in first)


def load_study(study: str, executed_dir: Union[str, Path] = "executed") -> Study:
    """Every run of `executed/<study>/`: run folders, notebooks without a folder, failures.json, study.json."""
    folder = Path(executed_dir) / study
    problems: list = []
    failures = _read_json(folder / FAILURES_FILE, problems, {})
    plan = _read_json(folder / STUDY_FILE, problems, {})
    names = {n for n in failures if RUN_NAME.match(n)}
    for path in folder.iterdir() if folder.is_dir() else ():
        name = path.name if path.is_dir() else path.stem if path.suffix == ".ipynb" else ""
        if RUN_NAME.match(name) and not name.startswith("."):
            names.add(name)
    runs = [load_run(folder / n, RunDir(folder / n).notebook, failures.get(n)) for n in names]

    planned = list(plan.get("variants", []))
    seeds = list(plan.get("seeds", []))
    variants = variant_order(planned + [r.variant for r in runs], first=planned or DEFAULT_VARIANTS)
    rank = {v: i for i, v in enumerate(variants)}
    runs.sort(key=lambda r: (rank[r.variant], r.seed))
    expected = [(v, s) for v in planned for s in seeds]
    return Study(name=study, folder=folder, runs=runs, variants=variants, expected=expected, failures=failures,
                 problems=problems)


def evaluation_row(run: Run, weights: Optional[str] = None) -> dict:
    """The evaluation_metrics row of one weight set (default: the deployed weights); {} when the run has no row
    for it. Never another weight set's row: a missing row is missing (see `missing_values`)."""
    frame = run.evaluation
    if frame.empty or "weights" not in frame:
        return {}
    chosen = frame[frame["weights"].astype(str) == (weights or run.deployed_weights)]
    return chosen.iloc[-1].to_dict() if not chosen.empty else {}


def missing_values(run: Run) -> list:
    """[(metric, weights, reason)] for values of the deployed weights that a finished run does not have at all
    (not a null with a status, which `_status` columns explain: a whole row or summary field that is absent)."""
    deployed = run.deployed_weights
    rows = []
    if not run.evaluation.empty and not evaluation_row(run):
        rows.append(("(all evaluation metrics)", deployed,
                     f"logs/evaluation_metrics.csv has no row for the deployed {deployed} weights"))
    return rows


def evaluation_metrics(study: Study) -> list:
    """The evaluation metrics any finished run reports a value for: the known ones first, then any new column."""
    columns: dict = {}
    for run in study.finished_runs:
        for column in run.evaluation.columns:
            if (column in EVALUATION_NON_METRICS or column.startswith("num_clips")
                    or column.endswith(("_status",) + EVALUATION_QUALIFIERS)):
                continue
            if pd.to_numeric(run.evaluation[column], errors="coerce").notna().any():
                columns[column] = True
    if "val_loss" in columns:  # each weight set's held-out loss, from its own row
        columns.update(dict.fromkeys(WEIGHT_SET_LOSSES, True))
    known = [m for m in EVALUATION_METRICS if m.key in columns]
    new = [Metric(c, c.replace("_", " "), None, "evaluation") for c in sorted(columns) if c not in {m.key for m in EVALUATION_METRICS}]
    return known + new


def run_metrics(study: Study) -> pd.DataFrame:
    """One row per finished run: variant, seed, run, and every metric's value (NaN where it is null)."""
    rows = []
    evaluated_metrics = evaluation_metrics(study)
    for run in study.finished_runs:
        row = {"variant": run.variant, "seed": run.seed, "run": run.name}
        for metric in TRAINING_METRICS:
            row[metric.key] = finite_number(run.summary.get(metric.key))
        evaluated = evaluation_row(run)  # the deployed weights'; a missing row stays missing
        for metric in evaluated_metrics:
            if metric.key in WEIGHT_SET_LOSSES:
                row[metric.key] = finite_number(evaluation_row(run, WEIGHT_SET_LOSSES[metric.key]).get(PRIMARY))
            else:
                row[metric.key] = finite_number(evaluated.get(metric.key))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.astype({c: float for c in frame.columns if c not in ("variant", "seed", "run")})


def available_metrics(study: Study, values: Optional[pd.DataFrame] = None) -> list:
    """The metrics with at least one value in this study, training ones first."""
    values = study.values if values is None else values
    candidates = list(TRAINING_METRICS) + evaluation_metrics(study)
    return [m for m in candidates if m.key in values and values[m.key].notna().any()]
