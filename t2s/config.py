"""The typed configuration: defaults, YAML merge (defaults ∘ scale ∘ variant ∘ overrides), validation.

One flat dataclass holds every knob, so that a papermill parameter, a `-p key=value` override and a YAML key are
the same name. Values derived from others (the cross-attention width, the effective batch) are properties, never
configured twice.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import yaml

PACKAGED_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = PROJECT_ROOT / "params"
# The variants a study runs when none are named (params/<name>.yaml each).
DEFAULT_VARIANTS = ("baseline", "text_finetuned", "no_ema")


class ConfigError(ValueError):
    """A bad configuration: the message names the file or key, the value, and what would be valid."""


# Keys whose value must be one of a fixed set.
CHOICES: dict[str, tuple] = {
    "beta_schedule": ("linear", "scaled_linear", "cosine"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "mixed_precision": ("auto", "no", "fp16", "bf16"),
    "channels_last": ("auto", True, False),
    "dataset": ("synthsign", "folder", "manifest", "phoenix14t", "how2sign"),
    "split_mode": ("signer_disjoint", "random", "official"),
    "fvd_real_split": ("train", "held_out"),
}

# Where training scalars may go (`trackers`): the run's own TensorBoard folder, and accelerate's trackers.
TRACKERS = ("tensorboard", "mlflow", "wandb", "aim")
# the package each of accelerate's trackers needs, and how to install it
TRACKER_PACKAGES = {"mlflow": ("mlflow", "pip install mlflow-skinny"), "wandb": ("wandb", "pip install wandb"),
                    "aim": ("aim", "pip install aim")}
MLFLOW_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

# Keys with numeric ranges: (low, high, low_inclusive, high_inclusive). None means unbounded.
RANGES: dict[str, tuple] = {
    "seed": (0, 2**32 - 1, True, True),  # numpy's and torch's seed range
    "image_size": (8, None, True, True),
    "num_frames": (1, None, True, True),
    "model_channels": (4, None, True, True),
    "num_res_blocks": (1, None, True, True),
    "num_heads": (1, None, True, True),
    "max_text_length": (4, None, True, True),
    "text_encoder_lr": (0.0, None, False, True),
    "num_train_timesteps": (2, None, True, True),
    "cond_drop_prob": (0.0, 1.0, True, True),
    "motion_loss_weight": (0.0, None, True, True),
    "text_layout_channels": (0, None, True, True),
    "num_inference_steps": (1, None, True, True),
    "guidance_scale": (0.0, None, True, True),
    "eta": (0.0, 1.0, True, True),
    "batch_size": (1, None, True, True),
    "num_epochs": (1, None, True, True),
    "max_steps": (1, None, True, True),
    "learning_rate": (0.0, None, False, True),
    "weight_decay": (0.0, None, True, True),
    "warmup_steps": (0, None, True, True),
    "gradient_accumulation_steps": (1, None, True, True),
    "max_grad_norm": (0.0, None, False, True),
    "ema_decay": (0.0, 1.0, True, False),
    "ema_update_every": (1, None, True, True),
    "save_every": (1, None, True, True),
    "keep_checkpoints": (1, None, True, True),
    "log_every": (1, None, True, True),
    "sample_every": (1, None, True, True),
    "train_ratio": (0.0, 1.0, False, False),
    "num_workers": (0, None, True, True),
    "synthsign_num_clips": (2, None, True, True),
    "synthsign_num_signers": (2, None, True, True),
    "val_max_clips": (1, None, True, True),
    "val_num_timesteps": (1, None, True, True),
    "validate_every": (1, None, True, True),
    "eval_num_clips": (1, None, True, True),
    "eval_batch_size": (1, None, True, True),
    "fvd_num_generated": (2, None, True, True),
    "bt_train_frames": (1, None, True, True),
    "bt_epochs": (1, None, True, True),
}


@dataclass
class Config:
    # --- identity (filled by the loader; free text a user may set) ---
    variant: str = "baseline"
    scale: str = "tiny"
    description: str = ""
    # --- the question a variant answers (read by the report; never changes training) ---
    compare_to: Optional[str] = None  # the variant this one is compared with, e.g. "baseline"
    question: str = ""  # e.g. "Does fine-tuning the text encoder help?"
    # the metric that decides the answer; "" = the report's default (the held-out loss). A params file may give one per
    # scale, {<scale>: metric, ..., default: metric}: the loader keeps the one of the scale it loads
    primary_metric: str = ""
    # --- video and denoiser ---
    image_size: int = 64
    num_frames: int = 16
    model_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [16, 8])
    num_heads: int = 4
    gradient_checkpointing: bool = False
    # the caption's pooled (masked mean) token state added to the timestep embedding, as Imagen and SD-XL do, next to
    # the cross-attention: every res block sees the caption
    pooled_text_conditioning: bool = False
    # each frame's relative position in the clip, embedded and added to its timestep embedding, so a frame's
    # cross-attention knows which word is being signed now (t2s.model.VideoUNet)
    frame_position_embedding: bool = False
    # true: the denoiser's first convolution also sees each pixel's column and row (two coordinate channels,
    # CoordConv), so it can place a hand at a position the caption determines (model.VideoUNet)
    spatial_position_channels: bool = False
    # true: a frame's cross-attention prefers the caption's words at its own relative time in the clip (words spread
    # evenly in their order; a learned strength per head), so frame f reads the word signed then (model.VideoUNet)
    aligned_cross_attention: bool = False
    # > 0: that many per-frame spatial maps of the words signed then (at half the image size, from each word's state
    # and where in the word the frame is), given to the first convolution beside the noisy frame (model.TextLayout)
    text_layout_channels: int = 0
    # --- text encoder ---
    text_encoder: str = PACKAGED_TEXT_ENCODER
    max_text_length: int = 77
    freeze_text_encoder: bool = True
    text_encoder_trainable_layers: Union[str, int] = "all"
    text_encoder_lr: float = 1e-5
    # --- diffusion ---
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    cond_drop_prob: float = 0.1
    # > 0: the training loss weights each pixel by 1 + motion_loss_weight * (its distance from the clip's temporal
    # mean, normalised per clip) -- the small moving hands against the static background (t2s.diffusion.motion_weights);
    # the held-out loss stays plain MSE
    motion_loss_weight: float = 0.0
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    # --- optimisation ---
    batch_size: int = 2
    num_epochs: int = 150
    max_steps: Optional[int] = None
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500
    gradient_accumulation_steps: int = 8
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto: bf16 on CUDA with bf16 and on CPUs with native bf16 (avx512_bf16/AMX), else no
    channels_last: Union[bool, str] = "auto"  # convolution weights channels-last; auto: on CUDA, and on CPU under bf16
    # --- EMA ---
    use_ema: bool = True
    ema_decay: float = 0.9999
    ema_update_every: int = 10
    ema_warmup: bool = True
    # --- bookkeeping ---
    save_every: int = 5
    keep_checkpoints: int = 3
    # a finished run keeps its final weights as safetensors (weights/) and prunes the optimizer-state checkpoints
    # (checkpoints/*.pt), unless this is true (then it can also be continued with resume_from)
    keep_optimizer_state: bool = False
    log_every: int = 10
    # where the training scalars go besides the run directory's CSVs: tensorboard (the run's tensorboard/ folder), and
    # through accelerate's trackers mlflow, wandb and aim (each needs its package; MLflow reads MLFLOW_TRACKING_URI)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    sample_every: int = 500
    sample_prompts: list[str] = field(
        default_factory=lambda: ["hello my name is anna", "where is the train station", "thank you very much"]
    )
    seed: int = 0
    resume_from: Optional[str] = None
    # --- data ---
    dataset: str = "synthsign"
    data_dir: Optional[str] = None
    manifest: Optional[str] = None
    split_mode: str = "signer_disjoint"
    # signer_disjoint: the share of clips whose signers train; the rest (at least 2 signers where the data has 3 or more
    # with comparable clip counts) are held out and divided into the development and test parts (t2s.data.splits)
    train_ratio: float = 0.75
    split_seed: int = 0
    num_workers: int = 0
    synthsign_num_clips: int = 400
    synthsign_num_signers: int = 8
    # --- validation and evaluation ---
    val_max_clips: int = 16
    val_num_timesteps: int = 4
    validate_every: int = 1  # epochs between the training's validations (step 0 and the last step always validate)
    eval_num_clips: int = 8  # an upper bound: evaluation uses at most the validation split's decodable clips
    eval_batch_size: int = 8  # clips sampled together in evaluation; each still comes from its own seed (t2s.pipeline)
    # FVD and KVD to StyleGAN-V's protocol (docs/evaluation.md, "FVD and KVD"): fvd_num_generated clips sampled from
    # the evaluation captions (the seen and novel clips first, then more of each caption with new seeds), compared with
    # up to as many real clips of fvd_real_split: "train" (the training split, as StyleGAN-V draws real clips from the
    # data set; the default) or "held_out" (the evaluation's own real clips, of held-out signers). StyleGAN-V's
    # fvd2048_16f: 2048 of each. FVD is judged from t2s.eval.metrics.validity.FVD_JUDGED_MIN_CLIPS clips per set (a
    # simulation's answer) and descriptive, with its n, below; KVD is judged at every n with its standard error.
    fvd_num_generated: int = 2048
    fvd_real_split: str = "train"
    # The back-translation recognizer (t2s/backtranslate.py; synthsign only): trained once per data and split on
    # ceil(bt_train_frames / num_frames) clips rendered for it (training-split signers, no held-out caption), for
    # bt_epochs epochs from bt_seed, then cached. Evaluation only: never changes training.
    bt_train_frames: int = 32000
    bt_epochs: int = 50
    bt_seed: int = 0

    # ---------------------------------------------------------------- derived values
    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    @property
    def run_name(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})


FIELD_TYPES = {f.name: f.type for f in fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check (and gently coerce: int -> float, '1e-4' from the command line) one value against its field type."""
    hint = _HINTS[key]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    where = f"{source}: " if source else ""
    if origin is Union:  # Optional[X] or Union[str, int]
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce_simple(key, value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}key '{key}' has value {value!r}; expected {_type_name(hint)}")
    return _coerce_simple(key, value, hint, where)


def _coerce_simple(key: str, value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    bad = ConfigError(f"{where}key '{key}' has value {value!r} of type {type(value).__name__}; expected {_type_name(hint)}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce_simple(key, v, item, where) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-5" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)  # as YAML writes it


def _check_range(cfg: Config, source: str) -> None:
    where = f"{source}: " if source else ""
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{where}key '{key}' has value {value!r}; allowed values: {', '.join(_shown(a) for a in allowed)}")
    for key, (lo, hi, lo_inc, hi_inc) in RANGES.items():
        value = getattr(cfg, key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}key '{key}' has value {value!r}; it must be a finite number")
        ok_lo = lo is None or (value >= lo if lo_inc else value > lo)
        ok_hi = hi is None or (value <= hi if hi_inc else value < hi)
        if not (ok_lo and ok_hi):
            lo_s = "-inf" if lo is None else f"{lo}"
            hi_s = "inf" if hi is None else f"{hi}"
            interval = f"{'[' if lo_inc else '('}{lo_s}, {hi_s}{']' if hi_inc else ')'}"
            raise ConfigError(f"{where}key '{key}' has value {value!r}; allowed range: {interval}")
    tl = cfg.text_encoder_trainable_layers
    if isinstance(tl, str) and tl != "all" or isinstance(tl, int) and tl < 1:
        raise ConfigError(
            f"{where}key 'text_encoder_trainable_layers' has value {tl!r}; allowed values: 'all' or a positive integer"
        )
    if not cfg.channel_mult or any(m < 1 for m in cfg.channel_mult):
        raise ConfigError(f"{where}key 'channel_mult' has value {cfg.channel_mult!r}; expected a non-empty list of positive integers")
    levels = len(cfg.channel_mult) - 1
    if cfg.image_size % (2**levels):
        raise ConfigError(
            f"{where}key 'image_size' has value {cfg.image_size}; it must be divisible by 2**(len(channel_mult)-1) = {2**levels}"
        )
    unknown = [t for t in cfg.trackers if t not in TRACKERS]
    if unknown or len(set(cfg.trackers)) != len(cfg.trackers):
        raise ConfigError(f"{where}key 'trackers' has value {cfg.trackers!r}; expected a list of distinct names from: "
                          f"{', '.join(TRACKERS)} (e.g. [tensorboard, mlflow]; [] logs to the CSVs only)")
    for key in ("model_channels",):
        ch = getattr(cfg, key)
        if any((ch * m) % cfg.num_heads for m in cfg.channel_mult) or ch % 4:
            raise ConfigError(
                f"{where}key '{key}' has value {ch}; every model_channels*channel_mult must be divisible by num_heads "
                f"({cfg.num_heads}) and model_channels by 4 (group norm)"
            )
    if cfg.zero_terminal_snr and cfg.prediction_type == "epsilon":  # v_prediction and sample are fine
        raise ConfigError(
            f"{where}key 'prediction_type' is 'epsilon' but zero_terminal_snr is true: at the last timestep the clip is "
            f"pure noise, so epsilon-prediction cannot recover it. Use prediction_type: v_prediction, or zero_terminal_snr: false"
        )
    if cfg.dataset in ("folder",) and not cfg.data_dir:
        raise ConfigError(f"{where}dataset 'folder' needs key 'data_dir' (a folder of <id>.gif + <id>.txt pairs)")
    if cfg.dataset in ("phoenix14t", "how2sign") and not cfg.data_dir:
        raise ConfigError(f"{where}dataset '{cfg.dataset}' needs key 'data_dir' (the release root)")
    if cfg.split_mode == "official" and cfg.dataset not in ("phoenix14t", "how2sign"):
        raise ConfigError(
            f"{where}key 'split_mode' has value 'official' but dataset is {cfg.dataset!r}; the official split exists "
            "for dataset phoenix14t and how2sign only (use signer_disjoint or random)"
        )
    if cfg.dataset == "manifest" and not cfg.manifest:
        raise ConfigError(f"{where}dataset 'manifest' needs key 'manifest' (a CSV/TSV with video, caption and signer columns)")


# Keys earlier versions had, with the value that meant "off": a config that holds one switched off (an older run's
# config.json) loads without it; one that switches it on is refused with the reason.
_HAND_POSE = ("the hand-pose stage was removed: its glove layer painted the gloves over the denoiser's output, so the "
              "text-following metrics measured a regression head, not the video model (a run trained with it cannot be "
              "loaded by this version; remove the key from the params file)")
_FVD_MIN = ("FVD is now computed on fvd_num_generated generated clips and judged from the clip count a simulation "
            "gives (t2s.eval.metrics.validity, docs/evaluation.md); set fvd_num_generated instead")
# Keys this version no longer has: {key: (the value a run written before loads with, why)}; another value is refused.
RETIRED_KEYS = {"hand_pose": (False, _HAND_POSE), "hand_pose_pretrain_steps": (0, _HAND_POSE),
                "hand_pose_lr": (None, _HAND_POSE), "fvd_min_clips": (401, _FVD_MIN)}


def _without_retired(data: dict, source: str) -> dict:
    """`data` without retired keys that hold their "off" value; a retired key switched on is a ConfigError."""
    where = f"{source}: " if source else ""
    for key, (off, why) in RETIRED_KEYS.items():
        if key in data and data[key] != off:
            raise ConfigError(f"{where}key '{key}' is no longer supported: {why}")
    return {k: v for k, v in data.items() if k not in RETIRED_KEYS}


def _check_keys(data: dict, source: str) -> None:
    where = f"{source}: " if source else ""
    for key in data:
        if key in RETIRED_KEYS:
            raise ConfigError(f"{where}key '{key}' is no longer supported: {RETIRED_KEYS[key][1]}")
        if key not in FIELD_TYPES:
            close = difflib.get_close_matches(str(key), list(FIELD_TYPES), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else "; see t2s/config.py for the valid keys"
            raise ConfigError(f"{where}unknown key '{key}'{hint}")


def from_dict(data: dict, source: str = "") -> Config:
    """Build and validate a Config from a complete or partial dict (missing keys take their defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping of key: value, got {type(data).__name__}")
    data = _without_retired(data, source)
    _check_keys(data, source)
    values = {k: _coerce(k, v, source) for k, v in data.items()}
    cfg = Config(**values)
    _check_range(cfg, source)
    return cfg


def check_trackers(cfg: Config) -> None:
    """A ConfigError, before anything is written, for a tracker this machine cannot use: its package missing, or
    MLflow's store unusable (MLflow 3 keeps its local file store in maintenance mode: a `file:` store needs
    MLFLOW_ALLOW_FILE_STORE=true; a database store, the default `sqlite:///mlflow.db` among them, needs SQLAlchemy)."""
    for name in cfg.trackers:
        if name == "tensorboard":
            continue
        module, install = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"key 'trackers' lists {name!r}, but the {module} package is not installed: {install} "
                              f"(or remove {name} from trackers)")
    if "mlflow" not in cfg.trackers:
        return
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if "://" in uri or uri.startswith("file:") else "file"
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise ConfigError(f"MLFLOW_TRACKING_URI={uri} is MLflow's local file store, which MLflow 3 keeps in maintenance "
                          f"mode: use a database store, e.g. MLFLOW_TRACKING_URI=sqlite:///mlflow.db, or opt in with "
                          f"MLFLOW_ALLOW_FILE_STORE=true")
    if scheme in MLFLOW_DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        raise ConfigError(f"MLFLOW_TRACKING_URI={uri} is a database store, which needs SQLAlchemy: pip install "
                          f"sqlalchemy alembic (both are in requirements.txt)")


def primary_metric_for(value: Any, scale: Optional[str], source: str = "") -> str:
    """A `primary_metric` as a params file gives it -- a metric name, or {<scale>: name, ..., default: name} -- for one
    scale: the scale's entry, else `default`, else "" (the report's default)."""
    if not isinstance(value, dict):
        return value
    where = f"{source}: " if source else ""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where}key 'primary_metric' has value {value!r}; expected a metric name or a mapping of "
                          f"scale name (or 'default') to metric name, e.g. {{tiny: dtw_gap_unseen, default: "
                          f"bt_bleu4_unseen}}")
    return value.get(scale or "", value.get("default", ""))


def read_yaml(path: Path) -> dict:
    """Read one params file; a YAML error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    _check_keys(data, str(path))
    for k, v in data.items():
        _coerce(k, primary_metric_for(v, None, str(path)) if k == "primary_metric" else v, str(path))
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML (numbers, booleans, lists), never as code."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if _HINTS.get(key) in (str, Optional[str]) and value is not None and not isinstance(value, str):
        value = raw.strip()  # a text key: "-p mixed_precision=no" means "no", not YAML's false
    return key, value


def available(kind: str, params_dir: Path = PARAMS_DIR) -> list[str]:
    folder = Path(params_dir) / ("scales" if kind == "scale" else "")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_params_file(name: str, kind: str, params_dir: Path = PARAMS_DIR) -> Path:
    """A variant or scale given by name (params/<name>.yaml, params/scales/<name>.yaml) or as a path."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    folder = Path(params_dir) / ("scales" if kind == "scale" else "")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        names = available(kind, params_dir)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown {kind} '{name}' (no file {path}); available: {', '.join(names) or 'none'}{hint}")
    return path


def load_config(
    variant: Optional[str] = "baseline",
    scale: Optional[str] = "tiny",
    overrides: Optional[Union[dict, list[str]]] = None,
    params_dir: Path = PARAMS_DIR,
) -> Config:
    """defaults ∘ scale file ∘ variant file ∘ overrides, validated; every error names its source."""
    merged: dict[str, Any] = {}
    if scale:
        merged.update(read_yaml(resolve_params_file(scale, "scale", params_dir)))
        merged["scale"] = Path(scale).stem
    if variant:
        merged.update(read_yaml(resolve_params_file(variant, "variant", params_dir)))
        merged["variant"] = Path(variant).stem
    if "primary_metric" in merged:  # one per scale, or one for all
        merged["primary_metric"] = primary_metric_for(merged["primary_metric"], merged.get("scale"), "config")
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        over = dict(items)
        _check_keys(over, "override")
        for k, v in over.items():
            _coerce(k, v, "override")
        merged.update(over)
    return from_dict(merged, source="config")


def load_config_file(path: Union[str, Path]) -> Config:
    """A resolved config.json (as a run directory holds) or a YAML file with every key to change."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        return from_dict(data, source=str(path))
    return from_dict(read_yaml(path), source=str(path))
