"""The run directory: the only interface between training and analysis. Every file is plain and written atomically.

```
<run_dir>/config.json                 the resolved Config
<run_dir>/metadata.json               status, times, git commit, host, device, versions, parameter counts, split
<run_dir>/summary.json                steps, losses, time, memory, throughput, validation losses raw and EMA
<run_dir>/logs/training_metrics.csv   one row per optimizer step
<run_dir>/logs/validation_metrics.csv one row per validation (step 0, every epoch, the end)
<run_dir>/logs/gpu_memory.csv         memory at every log point (CPU: process RSS)
<run_dir>/logs/phases.json            wall seconds by phase: setup, steps, validation, sampling, evaluation's parts
<run_dir>/tensorboard/                the same scalars and sample frames
<run_dir>/checkpoints/epoch_N.pt      resumable checkpoints (step_S.pt when a run stops mid-epoch); a finished run
                                      prunes them unless keep_optimizer_state: true
<run_dir>/weights/denoiser.safetensors       a finished run's final raw denoiser weights (metadata: step, epoch)
<run_dir>/weights/denoiser_ema.safetensors   its EMA weights as a denoiser state dict (runs with use_ema)
<run_dir>/weights/text_encoder.safetensors   its text encoder (runs that trained it: freeze_text_encoder false)
<run_dir>/weights/text_encoder_ema.safetensors  its EMA weights (runs that trained it with use_ema)
<run_dir>/samples/*.gif, samples.json sample clips for the fixed prompts
<run_dir>/logs/evaluation_metrics.csv one row per evaluated weight set (and .json, the same rows)
<run_dir>/evaluation/*.gif, index.json the evaluation clips, generated and real
<run_dir>/logs/evaluation_metrics_dev.*, evaluation_dev/   the same for the development part (evaluate --part dev)
<run_dir>/progress.json               what the run is doing now (phase, done of total, rate, loss), for live progress
<run_dir>.ipynb                       the executed training notebook, beside the folder
executed/<study>/study.json           the variants and seeds asked for, and the jobs
executed/<study>/failures.json        run name -> the failing cell's error
executed/<study>/phases.json          the last ablate's wall seconds: runs, report, total (and its jobs)
```
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

TRAINING_COLUMNS = [
    "epoch", "step", "loss", "lr", "grad_norm", "ema_decay", "step_time_s", "clips_per_s", "peak_memory_gb", "timestamp",
]
VALIDATION_COLUMNS = ["epoch", "step", "val_loss_raw", "val_loss_ema", "timestamp"]
MEMORY_COLUMNS = ["step", "device", "allocated_gb", "reserved_gb", "peak_gb", "rss_gb", "timestamp"]


# ---------------------------------------------------------------------------------------------- evaluation columns
# logs/evaluation_metrics.csv (and .json, and the development part's _dev files): one row per evaluated weight set.
CAPTION_SPLITS = ("seen", "novel", "paraphrase")  # the evaluation captions: seen in training, novel, paraphrased
BT_SCORES = ("bleu4", "wer", "exact")
# back-translation is scored per caption split and on "unseen" = novel + paraphrase pooled (captions whose wording
# never occurred in training: the text-encoder question's primary metric)
BT_GROUPS = {**{split: (split,) for split in CAPTION_SPLITS}, "unseen": ("novel", "paraphrase")}
# back-translation: bt_<score>_<group> (the metric), with _ceiling and _floor beside it; bt_bleu4_<group>_low/_high
BT_METRICS = tuple(f"bt_{score}_{split}" for split in BT_GROUPS for score in BT_SCORES)
# the DTW gap per caption group (`sign_fidelity_by_group`): where the model follows captions it saw in training, and
# captions it did not ("unseen", as back-translation's: novel and paraphrased pooled)
DTW_GROUPS = {"seen": ("seen",), "unseen": ("novel", "paraphrase")}
DTW_GROUP_COLUMNS = [c for group in DTW_GROUPS for c in (f"dtw_gap_{group}", f"dtw_gap_{group}_low",
                                                           f"dtw_gap_{group}_high")]
BT_COLUMNS = [column for split in BT_GROUPS for column in [
    *(f"bt_{score}_{split}{part}" for score in BT_SCORES for part in ("", "_ceiling", "_floor")),
    f"bt_bleu4_{split}_low", f"bt_bleu4_{split}_high"]]
STATUS_METRICS = ("fvd", "kvd", "kvd_std", "lpips", "ssim", "psnr", "dtw_error", "dtw_error_shuffled", "dtw_gap",
                  *(f"dtw_gap_{group}" for group in DTW_GROUPS), "hand_detection_rate", "caption_dependence") + BT_METRICS
EVALUATION_COLUMNS = [
    "model_name", "config_name", "weights",
    "fvd", "fvd_judged", "kvd", "kvd_std", "fvd_num_generated", "fvd_num_real", "fvd_real_set",
    "lpips", "ssim", "psnr",
    "temporal_consistency", "temporal_consistency_real", "motion_magnitude", "motion_magnitude_real",
    "dtw_error", "dtw_error_shuffled", "dtw_gap", "dtw_gap_low", "dtw_gap_high", *DTW_GROUP_COLUMNS, "dtw_clips",
    "hand_detection_rate", "hand_detection_rate_low", "hand_detection_rate_high",
    *BT_COLUMNS,
    "val_loss", "val_loss_other_caption", "caption_dependence",
    "inference_time_ms", "inference_memory_gb", "num_parameters_millions",
    "eval_part", "eval_signers", "num_inference_steps", "guidance_scale", "num_clips",
    "num_clips_seen", "num_clips_novel", "num_clips_paraphrase",
    "feature_extractor", "feature_weights_sha256", "bt_recognizer", "timestamp",
] + [f"{m}_status" for m in STATUS_METRICS]


def umask() -> int:
    """This process's umask: read from /proc on Linux (setting it to read it back would open a moment in which another
    thread's new file is world-writable), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode the user's umask gives an ordinary new file (0o644 under the common umask 022)."""
    return 0o666 & ~umask()


@contextmanager
def exclusive_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` (made, with its folder, when absent) until the block ends: other
    processes and threads asking for it wait, or with `blocking=False` are told at once that they do not hold it.
    Yields whether this one holds it (always True when blocking). fcntl.flock: the OS releases it when the holder
    dies."""
    import fcntl  # POSIX only: imported here so that the rest of this module loads anywhere

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:  # the lock is released when the file closes
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a crash never leaves a half-written file.
    durable=False skips the fsync: a reader still never sees a half-written file (for files rewritten often, whose
    loss in a crash does not matter: progress.json). The file gets the mode an ordinary file gets under the user's
    umask (a temporary file is private; collaborators on a shared file system must read what a run writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), file_mode())
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, f"could not write {path} ({exc.strerror}); the previous version of the file, "
                          f"if any, is intact") from exc
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def atomic_write_json(path: Path, data: Any, durable: bool = True) -> None:
    text = json.dumps(_jsonable(data), indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return default


STUDY_FILE = "study.json"
FAILURES_FILE = "failures.json"
STUDY_PHASES_FILE = "phases.json"  # executed/<study>/phases.json: the last ablate's wall seconds (runs, report)
COMPARISON_TABLE = "comparison_table"  # reports/<study>/comparison_table.csv (long, numeric) and .md (as shown)
# progress.json: every key is always there (None where it does not apply). phase: validating, training, sampling,
# trained (training done, evaluation next), evaluating, evaluated; done of total units ("step" while training,
# "clip" while evaluating); rate: units per second lately; loss and clips_per_s of the last log window; weights: the
# weight set being evaluated; time: when it was written (seconds since the epoch).
PROGRESS_KEYS = ["phase", "done", "total", "unit", "rate", "loss", "clips_per_s", "epoch", "weights", "time"]


class RunDir:
    """Paths of one run and the small writers every file goes through."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.checkpoints = self.root / "checkpoints"
        self.weights = self.root / "weights"  # a finished run's final weights, safetensors (t2s.engine.checkpoint)
        self.weights_raw = self.weights / "denoiser.safetensors"
        self.weights_ema = self.weights / "denoiser_ema.safetensors"
        self.weights_text = self.weights / "text_encoder.safetensors"
        self.weights_text_ema = self.weights / "text_encoder_ema.safetensors"
        self.samples = self.root / "samples"
        self.tensorboard = self.root / "tensorboard"
        self.config = self.root / "config.json"
        self.metadata = self.root / "metadata.json"
        self.summary = self.root / "summary.json"
        self.training_csv = self.logs / "training_metrics.csv"
        self.validation_csv = self.logs / "validation_metrics.csv"
        self.memory_csv = self.logs / "gpu_memory.csv"
        self.evaluation_csv = self.logs / "evaluation_metrics.csv"
        self.evaluation_json = self.logs / "evaluation_metrics.json"
        self.evaluation = self.root / "evaluation"
        self.evaluation_index = self.evaluation / "index.json"
        self.checkpoint_index = self.checkpoints / "index.json"  # [{file, step, epoch, sha256}], oldest first
        self.samples_json = self.samples / "samples.json"
        self.progress = self.root / "progress.json"
        self.phases = self.logs / "phases.json"  # {phase: wall seconds} (t2s.engine.phases)
        self.notebook = self.root.with_suffix(".ipynb")

    def remove_unfinished_writes(self) -> list[str]:
        """Remove the temporary files that writes of a process killed mid-write left anywhere in the run folder,
        checkpoints/ included (an atomic write is `.<name>.<random>.tmp` beside its file until it is renamed into
        place). Called by the run's owner before it writes again (a resume, an evaluation). Returns the paths
        removed, relative to the run folder."""
        removed = []
        for path in sorted(self.root.rglob(".*.tmp")) if self.root.is_dir() else []:
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(self.root)))
        return removed

    def sample_gif(self, step: int, index: int) -> Path:
        """samples/step<S>_<i>.gif: the training sample of prompt i at optimizer step S."""
        return self.samples / f"step{step:06d}_{index}.gif"

    @staticmethod
    def evaluation_gif_name(weights: str, index: int) -> str:
        """<weights>_<i>.gif in an evaluation folder: clip i as generated by a weight set, or "real"."""
        return f"{weights}_{index:03d}.gif"

    def evaluation_paths(self, part: str = "test") -> tuple[Path, Path, Path]:
        """(rows CSV, rows JSON, clips folder) of an evaluation of one part of the evaluation set: the test part's
        (what the report reads) are `evaluation_csv`, `evaluation_json` and `evaluation`; the development part's
        carry a `_dev` suffix."""
        if part == "test":
            return self.evaluation_csv, self.evaluation_json, self.evaluation
        return (self.logs / f"evaluation_metrics_{part}.csv", self.logs / f"evaluation_metrics_{part}.json",
                self.root / f"evaluation_{part}")

    def make(self) -> "RunDir":
        for d in (self.root, self.logs, self.checkpoints, self.samples, self.tensorboard):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def read_metadata(self) -> dict:
        return read_json(self.metadata, {}) or {}

    def update_metadata(self, **fields: Any) -> dict:
        meta = {**self.read_metadata(), **fields}
        atomic_write_json(self.metadata, meta)
        return meta

    @property
    def status(self) -> str | None:
        return self.read_metadata().get("status")

    @property
    def complete(self) -> bool:
        """A run is complete when it is trained and evaluated: metadata.json says "finished" and the test part's rows
        hold every weight set it keeps (raw, and EMA when `use_ema`). The rows are an evaluation's last write."""
        if self.status != "finished":
            return False
        rows = read_json(self.evaluation_json, [])
        weights = {r.get("weights") for r in rows} if isinstance(rows, list) else set()
        use_ema = (read_json(self.config, {}) or {}).get("use_ema", False)
        return {"raw", "ema"} <= weights if use_ema else "raw" in weights

    def write_progress(self, phase: str, done: int, total: int, unit: str, **fields: Any) -> None:
        """progress.json, replaced atomically (not fsynced: it is rewritten at every log point and phase change)."""
        unknown = set(fields) - set(PROGRESS_KEYS)
        if unknown:
            raise ValueError(f"progress.json has no key {sorted(unknown)}; its keys: {PROGRESS_KEYS}")
        record = {**dict.fromkeys(PROGRESS_KEYS), **fields, "phase": phase, "done": int(done), "total": int(total),
                  "unit": unit, "time": time.time()}
        atomic_write_json(self.progress, record, durable=False)

    def read_progress(self) -> dict | None:
        """progress.json as written, or None when there is none (or it is not a JSON object)."""
        record = read_json(self.progress, None)
        return record if isinstance(record, dict) else None


def append_rows(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    """Append rows to a CSV (header written when the file is new). Rows are flushed before returning."""
    path = Path(path)
    rows = list(rows)
    if not rows:
        return
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
        fh.flush()


def truncate_rows_after(path: Path, step: int) -> None:
    """On resume: drop rows logged after the checkpoint's step, so the curve has no duplicated stretch."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        rows = [r for r in reader if r.get("step", "") != "" and int(float(r["step"])) <= step]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, out.getvalue().encode("utf-8"))


def finite_number(value: Any) -> float | None:
    """A value read from a run's JSON or CSV as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
