"""Back-translation for synthsign: a small recognizer reads the gloss sequence a clip signs, and the reading is scored
against the caption's glosses (BLEU-4, WER, exact sequence), as sign-language production papers judge generated
signing with a fixed recognizer.

    recognizer = load_or_train(image_size=32, num_frames=8, signers=[1, 2, 3], exclude=held_out, cache_dir=folder)
    readings = recognizer.read(clips)            # clips (B, 3, F, H, W) in [-1, 1] -> [["thank", "you", ...], ...]
    scores = back_translation(readings, real_readings, references)

How it reads a clip
-------------------
* Per frame, per hand (`frame_features`): the kit's colour hand finder (`metrics.find_hands`, default tolerance) gives
  the glove's centre, which is kept as (x, y) in image widths with a found flag; and a CROP x CROP crop of the frame's
  soft glove-colour similarity exp(-(d / 60)^2) (d = RGB distance to the glove colour) around that centre, of the
  glove stamp's extent at this image size, resampled (area) to CROP x CROP: the hand shape. A hand the finder misses
  is all zeros -- the recognizer reads what the kit's hand metrics see, no more.
* `GlossRecognizer`: a linear shape encoder (shared by both hands), a linear frame encoder, two temporal
  convolutions (kernel 3), and per frame the logits of the gloss the frame shows plus one "a new gloss starts here"
  logit. Trained with cross-entropy on per-frame gloss labels and start flags taken from the renderer
  (`synthsign.frame_gloss_index`): per-frame supervision learns in seconds where CTC sat on its blank plateau for the
  whole budget here.
* Decoding (`decode`): the segmentation of the frames into glosses that maximises the sum over segments of the best
  gloss's log-probability over the segment's frames plus the start/no-start log-probabilities (a semi-Markov Viterbi
  pass, O(F^2 V)). A repeated gloss ("work work") is two segments; every reading has at least one gloss.

How it is trained
-----------------
On clips rendered for it (`RecognizerSettings.train_frames` frames' worth), never on evaluation clips: random captions of 2-5
vocabulary glosses (`t2s.synthsign.glosses.random_caption`, a uniform prior over gloss sequences, so the recognizer has no
preference for captions seen in training), none of whose gloss sequences is in `exclude` (evaluation passes every
held-out caption's glosses), signed by the training split's signers only. A `degraded_fraction` of them is degraded
once before feature extraction as generated clips are (Gaussian blur, colours washed toward the frame mean,
brightness, noise), and features are jittered per batch (centres by 0.5 px, 5% of hands dropped). One CPU thread;
everything (captions, signers, render seeds, degradations, initial weights, batches) follows `settings.seed`, so the
same seed gives the same weights and readings.

Cache: `<cache_dir>/recognizer-<16 hex>.pt`, named by the SHA-256 of everything that determines the weights
(`recognizer_key`: versions of this module and the renderer, the vocabulary, image size, frames, signers, excluded
sequences, settings); written atomically, read with `torch.load(weights_only=True)`.

Scores (`back_translation`)
---------------------------
Gloss sequences are space-joined gloss names. BLEU-4 is sacrebleu's corpus BLEU (0-100, its default 'exp'
smoothing) with tokenize "none": the glosses are already tokens, and "13a" would split a token with an apostrophe
(an unknown word's fallback gloss such as "don't"). As sacrebleu defines it, a corpus whose readings hold no 4-gram
scores 0 (synthsign captions have 2-5 glosses, so a split of several clips has 4-grams). WER is jiwer's corpus WER (edits / reference glosses; can
exceed 1). Exact is the fraction of clips whose reading equals its reference sequence.

Imports `t2s.metrics` (the hand finder and its colour tolerance), `t2s.synthsign.glosses` and `t2s.synthsign.signer` (the vocabulary and the renderer),
`t2s.synthsign.dataset` (the data version in the cache key), `t2s.data.video` and `t2s.rundir`.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import jiwer
import numpy as np
import torch
from sacrebleu.metrics import BLEU
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from t2s.data.splits import build_datasets, caption_key
from t2s.data.video import to_frames
from t2s.eval.metrics.hands import HAND_COLOR_TOLERANCE, find_hands
from t2s.rundir import atomic_write_bytes, exclusive_lock
from t2s.synthsign import signer as synthsign
from t2s.synthsign.dataset import SYNTHSIGN_VERSION, recognizer_dir
from t2s.synthsign.glosses import VOCABULARY, random_caption

RECOGNIZER_VERSION = 1  # bump when features, model, training or decoding change: old cached weights are not reused
CROP = 9  # hand-shape crops are resampled to CROP x CROP
SOFT_COLOR_SCALE = HAND_COLOR_TOLERANCE  # RGB distance at which a pixel's glove similarity falls to 1/e
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
INTERVAL = 0.95
INTERVAL_MIN_CLIPS = 5  # as the DTW gap: fewer clips have too few distinct resamples for a 95% interval


def vocabulary() -> list[str]:
    """The glosses a recognizer can read, in its output order."""
    return sorted(VOCABULARY)


@dataclass(frozen=True)
class RecognizerSettings:
    """How a recognizer is trained. The defaults are config.py's `bt_train_frames`, `bt_epochs`, `bt_seed`."""

    train_frames: int = 32000  # frames of training clips: ceil(train_frames / num_frames) clips
    epochs: int = 50
    seed: int = 0
    batch_size: int = 64
    learning_rate: float = 3e-3
    hidden: int = 96
    degraded_fraction: float = 0.5


# --------------------------------------------------------------------------------------------- features
def frame_features(frames: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3) -> float32 (F, 2 hands, 3 + CROP * CROP): per hand x / W, y / H, found (0 or 1), and the
    glove-similarity crop around the found centre (zeros where the hand finder found none); see the module doc."""
    frames = np.asarray(frames)
    num_frames, height, width, _ = frames.shape
    keypoints, found = find_hands(frames, synthsign.HAND_COLORS)
    extent, _ = synthsign.hand_stamps(max(height, width))
    side = 2 * extent + 1
    padded = np.pad(frames, ((0, 0), (extent, extent), (extent, extent), (0, 0)))  # black: far from both gloves
    windows = np.lib.stride_tricks.sliding_window_view(padded, (side, side), axis=(1, 2))  # (F, H, W, 3, s, s)
    resample = _area_matrix(side, CROP)
    out = np.zeros((num_frames, len(synthsign.HAND_COLORS), 3 + CROP * CROP), dtype=np.float32)
    for h, colour in enumerate(synthsign.HAND_COLORS.values()):
        rows = np.nonzero(found[:, h])[0]
        if len(rows) == 0:
            continue
        x = np.clip(np.round(keypoints[rows, h, 0]).astype(int), 0, width - 1)
        y = np.clip(np.round(keypoints[rows, h, 1]).astype(int), 0, height - 1)
        crops = windows[rows, y, x].astype(np.float32)  # (n, 3, s, s), centred on the hand
        distance = np.sqrt(((crops - np.asarray(colour, np.float32)[:, None, None]) ** 2).sum(axis=1))
        similarity = np.exp(-((distance / SOFT_COLOR_SCALE) ** 2))
        out[rows, h, 0] = keypoints[rows, h, 0] / width
        out[rows, h, 1] = keypoints[rows, h, 1] / height
        out[rows, h, 2] = 1.0
        out[rows, h, 3:] = (resample @ similarity @ resample.T).reshape(len(rows), -1)
    return out


@functools.lru_cache(maxsize=None)
def _area_matrix(size: int, target: int) -> np.ndarray:
    """(target, size) matrix of area resampling: row i averages the input cells under output cell i (overlap-weighted;
    rows sum to 1); the identity when size == target."""
    edges_in, edges_out = np.arange(size + 1) / size, np.arange(target + 1) / target
    overlap = np.clip(np.minimum(edges_out[1:, None], edges_in[None, 1:]) - np.maximum(edges_out[:-1, None],
                                                                                       edges_in[None, :-1]), 0, None)
    matrix = (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rendered clip made to look generated: blur (sigma 0.2-0.8 px per 32 px of image), colours washed toward the
    frame mean by 0-15%, brightness x0.85-1.15 and +-15, Gaussian noise of sigma 0-10. uint8 in and out."""
    size = frames.shape[1]
    x = frames.astype(np.float32)
    sigma = rng.uniform(0.2, 0.8) * size / 32
    x = ndimage.gaussian_filter(x, (0, sigma, sigma, 0))
    wash = rng.uniform(0.0, 0.15)
    x = (1 - wash) * x + wash * x.mean(axis=(1, 2), keepdims=True)
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    x = x + rng.normal(0.0, rng.uniform(0, 10), x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def clip_frames(clips: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, F, H, W) in [-1, 1] -> [uint8 (F, H, W, 3)]."""
    return [to_frames(clip) for clip in clips]


# --------------------------------------------------------------------------------------------- the model
class GlossRecognizer(nn.Module):
    """Frame features (B, F, 2, 3 + CROP^2) -> gloss logits (B, V, F) and gloss-start logits (B, F)."""

    def __init__(self, num_glosses: int, hidden: int = 96, shape_dim: int = 32):
        super().__init__()
        self.shape = nn.Sequential(nn.Linear(CROP * CROP, shape_dim), nn.ReLU())
        self.frame = nn.Linear(2 * (3 + shape_dim), hidden)
        self.temporal = nn.Sequential(
            nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.ReLU(), nn.Conv1d(hidden, num_glosses + 1, 1),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames = features.shape[:2]
        shape = self.shape(features[..., 3:])  # (B, F, 2, S)
        per_frame = torch.cat([features[..., :3], shape], dim=-1).reshape(batch, frames, -1)
        out = self.temporal(self.frame(per_frame).transpose(1, 2))  # (B, V + 1, F)
        return out[:, :-1], out[:, -1]


def decode(gloss_logits: np.ndarray, start_logits: np.ndarray) -> list[int]:
    """The most probable gloss sequence of one clip: gloss_logits (V, F), start_logits (F,) -> gloss indices.

    Maximises, over segmentations of the frames into consecutive segments, the sum over segments of
    max_g sum_{f in segment} log p_f(g) plus log sigmoid(start) at each segment's first frame and log sigmoid(-start)
    at every other frame."""
    logp = gloss_logits - np.logaddexp.reduce(gloss_logits, axis=0, keepdims=True)
    num_frames = logp.shape[1]
    starts, continues = -np.logaddexp(0, -start_logits), -np.logaddexp(0, start_logits)
    cumulative = np.concatenate([np.zeros((len(logp), 1)), np.cumsum(logp, axis=1)], axis=1)  # (V, F + 1)
    segment = cumulative[:, None, :] - cumulative[:, :, None]  # [g, s, e] = sum of frames s..e-1
    best_gloss, best = segment.argmax(axis=0), segment.max(axis=0)
    no_start = np.concatenate([[0.0], np.cumsum(continues)])
    score, back = np.full(num_frames + 1, -np.inf), np.zeros(num_frames + 1, dtype=int)
    score[0] = 0.0
    for end in range(1, num_frames + 1):
        begin = np.arange(end)
        candidates = score[begin] + best[begin, end] + starts[begin] + (no_start[end] - no_start[begin + 1])
        back[end] = int(np.argmax(candidates))
        score[end] = candidates[back[end]]
    glosses, end = [], num_frames
    while end > 0:
        glosses.append(int(best_gloss[back[end], end]))
        end = back[end]
    return glosses[::-1]


class Recognizer:
    """A trained `GlossRecognizer` for one image size and frame count; `read` turns clips into gloss sequences."""

    def __init__(self, model: GlossRecognizer, image_size: int, num_frames: int, glosses: list[str], info: dict):
        self.model, self.image_size, self.num_frames, self.glosses = model.eval(), image_size, num_frames, glosses
        self.info = info  # key, settings, train_seconds, source ("trained" | "cache"), path

    def read_frames(self, clips: Sequence[np.ndarray]) -> list[list[str]]:
        """uint8 clips [(F, H, W, 3)] -> their gloss sequences."""
        if not clips:
            return []
        shape = (self.num_frames, self.image_size, self.image_size)
        for frames in clips:
            if tuple(frames.shape[:3]) != shape:
                raise ValueError(f"this recognizer reads clips of {shape} (frames, height, width), got {frames.shape[:3]}")
        features = torch.from_numpy(np.stack([frame_features(frames) for frames in clips]))
        with torch.no_grad(), _one_thread():
            gloss_logits, start_logits = self.model(features)
        return [[self.glosses[g] for g in decode(gl.double().numpy(), st.double().numpy())]
                for gl, st in zip(gloss_logits, start_logits)]

    def read(self, clips: torch.Tensor) -> list[list[str]]:
        """Clips (B, 3, F, H, W) in [-1, 1] -> their gloss sequences [[gloss, ...]]."""
        return self.read_frames(clip_frames(clips.detach().float().cpu()))


# --------------------------------------------------------------------------------------------- training
@contextmanager
def _one_thread():
    """One intra-op thread: the model is tiny, and OpenMP threads on a shared CPU wait on each other far longer than
    they save; one thread also fixes the order of the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def recognizer_key(image_size: int, num_frames: int, signers: Sequence[int], exclude, settings: RecognizerSettings) -> str:
    """SHA-256 (hex) of everything that determines a recognizer's weights."""
    spec = {
        "recognizer_version": RECOGNIZER_VERSION, "synthsign_version": SYNTHSIGN_VERSION, "vocabulary": vocabulary(),
        "image_size": int(image_size), "num_frames": int(num_frames), "signers": sorted(int(s) for s in set(signers)),
        "exclude": sorted(" ".join(g) for g in {tuple(e) for e in exclude}), "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def training_clips(image_size: int, num_frames: int, signers: Sequence[int], exclude, settings: RecognizerSettings):
    """The recognizer's training set: features float32 (N, F, 2, 3 + CROP^2), per-frame gloss labels int64 (N, F),
    gloss-start flags float32 (N, F), and the captions [N] (see the module doc)."""
    if not signers:
        raise ValueError("the recognizer needs at least one training signer")
    excluded = {tuple(e) for e in exclude}
    index = {g: i for i, g in enumerate(vocabulary())}
    rng = np.random.default_rng([int(settings.seed), 0xB7])
    signers = sorted(int(s) for s in set(signers))
    features, labels, starts, captions = [], [], [], []
    for i in range(math.ceil(settings.train_frames / num_frames)):
        caption = random_caption(rng)
        while tuple(caption.split()) in excluded:
            caption = random_caption(rng)
        glosses = caption.split()
        frames, _ = synthsign.render_clip(caption, signers[i % len(signers)], num_frames, image_size,
                                          seed=int(rng.integers(0, 2**31)))
        if rng.random() < settings.degraded_fraction:
            frames = degrade(frames, rng)
        which = synthsign.frame_gloss_index(len(glosses), num_frames)
        features.append(frame_features(frames))
        labels.append([index[glosses[g]] for g in which])
        starts.append(np.concatenate([[1.0], (np.diff(which) != 0).astype(np.float64)]))
        captions.append(caption)
    return (np.stack(features), np.asarray(labels, dtype=np.int64), np.asarray(starts, dtype=np.float32), captions)


def train_recognizer(image_size: int, num_frames: int, signers: Sequence[int], exclude=(),
                     settings: RecognizerSettings = RecognizerSettings(), stop=None) -> Recognizer:
    """Render the training clips and train a recognizer on them (deterministic given settings.seed). `stop`: a
    threading.Event; once set, training ends at the next epoch with InterruptedError (nothing is returned)."""
    t0 = time.perf_counter()
    features, labels, starts, _ = training_clips(image_size, num_frames, signers, exclude, settings)
    features, labels, starts = torch.from_numpy(features), torch.from_numpy(labels), torch.from_numpy(starts)
    glosses = vocabulary()
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = GlossRecognizer(len(glosses), settings.hidden)
        generator = torch.Generator().manual_seed(settings.seed)
        n = len(features)
        steps = settings.epochs * math.ceil(n / settings.batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=steps)
        jitter = 0.5 / image_size  # half a pixel, in image widths
        for _ in range(settings.epochs):
            if stop is not None and stop.is_set():
                raise InterruptedError("the recognizer's training was stopped")
            order = torch.randperm(n, generator=generator)
            for i in range(0, n, settings.batch_size):
                batch = order[i : i + settings.batch_size]
                x = features[batch].clone()
                x[..., :2] += torch.randn(x[..., :2].shape, generator=generator) * jitter * x[..., 2:3]
                x[torch.rand(x.shape[:3], generator=generator) < 0.05] = 0.0  # a missed hand
                gloss_logits, start_logits = model(x)
                loss = F.cross_entropy(gloss_logits, labels[batch]) + \
                    F.binary_cross_entropy_with_logits(start_logits, starts[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    info = {"key": recognizer_key(image_size, num_frames, signers, exclude, settings), "settings": asdict(settings),
            "train_seconds": time.perf_counter() - t0, "final_loss": float(loss.detach()), "source": "trained", "path": None}
    return Recognizer(model, image_size, num_frames, glosses, info)


def save_recognizer(recognizer: Recognizer, path: Path) -> None:
    """The weights and what they are, as plain types (loadable with weights_only=True), written atomically."""
    info = {k: v for k, v in recognizer.info.items() if k not in ("source", "path")}
    state = {"state_dict": recognizer.model.state_dict(), "glosses": list(recognizer.glosses),
             "image_size": recognizer.image_size, "num_frames": recognizer.num_frames, "info": json.dumps(info)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_recognizer(path: Path) -> Recognizer:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    info = json.loads(state["info"])
    model = GlossRecognizer(len(state["glosses"]), info["settings"]["hidden"])
    model.load_state_dict(state["state_dict"])
    return Recognizer(model, int(state["image_size"]), int(state["num_frames"]), list(state["glosses"]),
                      {**info, "source": "cache", "path": str(path)})


def load_or_train(image_size: int, num_frames: int, signers: Sequence[int], exclude, cache_dir: Path,
                  settings: RecognizerSettings = RecognizerSettings(), stop=None) -> Recognizer:
    """The cached recognizer of these inputs, or a newly trained one (then cached). A cache file that does not load
    is replaced. `stop`: as `train_recognizer`'s."""
    key = recognizer_key(image_size, num_frames, signers, exclude, settings)
    path = Path(cache_dir) / f"recognizer-{key[:16]}.pt"
    # one process trains it; another asking meanwhile (the other run of a study, ablate's `prepare_for`) waits for it
    with exclusive_lock(path.with_suffix(".lock")):
        if path.is_file():
            try:
                recognizer = load_recognizer(path)
                if recognizer.info.get("key") == key:
                    return recognizer
            except Exception:  # a truncated or foreign file: train again and overwrite it
                pass
        recognizer = train_recognizer(image_size, num_frames, signers, exclude, settings, stop)
        save_recognizer(recognizer, path)
    recognizer.info["path"] = str(path)
    return recognizer


def recognizer_for(cfg, train_set, val_set, stop=None):
    """(the recognizer an evaluation of `cfg` reads with: cached, or trained and cached, {}) or (None, {"*": why
    there is none}). Its training clips are rendered from the training split's signers, never with a caption of the
    validation split."""
    if cfg.dataset != "synthsign" or not train_set.has_keypoints:
        return None, {"*": f"back-translation reads synthsign glosses: needs dataset synthsign, not {cfg.dataset!r}"}
    settings = RecognizerSettings(train_frames=cfg.bt_train_frames, epochs=cfg.bt_epochs, seed=cfg.bt_seed)
    signers = [synthsign.signer_index(s) for s in train_set.signers]
    held_out = {caption_key(r.caption, True) for r in val_set.records}  # never trained on a held-out caption
    try:
        recognizer = load_or_train(cfg.image_size, cfg.num_frames, signers, held_out, recognizer_dir(cfg), settings,
                                   stop)
    except Exception as exc:  # a failure here must not cost the other metrics: null with the reason
        return None, {"*": f"the back-translation recognizer could not be trained: {type(exc).__name__}: {exc}"}
    return recognizer, {}


def prepare_for(cfg, stop=None) -> Optional[str]:
    """Train and cache the recognizer that evaluations of `cfg` read with, unless it is cached (ablate does this beside
    a study's first runs, so that they find it instead of each training it). Returns why there is none, or None.
    `stop`: as `train_recognizer`'s (then the reason says it was stopped)."""
    train_set, val_set, _ = build_datasets(cfg)
    recognizer, unavailable = recognizer_for(cfg, train_set, val_set, stop)
    return None if recognizer is not None else unavailable["*"]


# --------------------------------------------------------------------------------------------- scores
def _bleu():
    return BLEU(tokenize="none")


def _text(glosses: Sequence[str]) -> str:
    return " ".join(glosses)


def bleu4(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU-4 (0-100) of gloss sequences, tokenize 'none'."""
    return float(_bleu().corpus_score([_text(h) for h in hypotheses], [[_text(r) for r in references]]).score)


def wer(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """jiwer corpus WER: (substitutions + deletions + insertions) / reference glosses."""
    if any(len(r) == 0 for r in references):
        raise ValueError("WER needs a non-empty reference gloss sequence for every clip")
    return float(jiwer.wer([_text(r) for r in references], [_text(h) for h in hypotheses]))


def exact(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Fraction of clips whose reading equals the reference sequence."""
    return float(np.mean([list(h) == list(r) for h, r in zip(hypotheses, references)]))


def scores(hypotheses, references) -> dict:
    """{bleu4, wer, exact} of readings against references (one each per clip)."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} readings for {len(references)} references")
    return {"bleu4": bleu4(hypotheses, references), "wer": wer(hypotheses, references),
            "exact": exact(hypotheses, references)}


def sentence_statistics(hypotheses, references) -> np.ndarray:
    """sacrebleu's BLEU statistics of each (reading, reference) pair: int64 (n, 2 + 2 * 4) = [hypothesis length,
    reference length, matching 1..4-grams, hypothesis 1..4-grams]. Summed over clips they give corpus BLEU."""
    bleu = _bleu()
    rows = []
    for h, r in zip(hypotheses, references):
        one = bleu.corpus_score([_text(h)], [[_text(r)]])
        rows.append([one.sys_len, one.ref_len, *one.counts, *one.totals])
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2 + 2 * bleu.max_ngram_order)


def bleu_from_statistics(total: np.ndarray) -> float:
    """Corpus BLEU-4 (sacrebleu's formula and smoothing) from summed `sentence_statistics`."""
    bleu, order = _bleu(), (len(total) - 2) // 2
    return float(BLEU.compute_bleu(total[2 : 2 + order].tolist(), total[2 + order :].tolist(), int(total[0]),
                                   int(total[1]), smooth_method=bleu.smooth_method).score)


def bleu4_interval(hypotheses, references, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                   level: float = INTERVAL) -> tuple[float, float]:
    """Percentile bootstrap interval of corpus BLEU-4 over clips (resampled with replacement; Koehn 2004): each clip's
    statistics are taken once (`sentence_statistics`) and summed per resample."""
    stats = sentence_statistics(hypotheses, references)
    rng = np.random.default_rng(seed)
    values = [bleu_from_statistics(stats[rng.integers(0, len(stats), size=len(stats))].sum(axis=0))
              for _ in range(resamples)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def back_translation(readings: Sequence[Sequence[str]], real_readings: Sequence[Sequence[str]],
                     references: Sequence[Sequence[str]]) -> dict:
    """Scores of one caption split: {bleu4, wer, exact} of the generated clips' readings against their references;
    `*_ceiling`: the real clips' readings against the same references; `*_floor`: the generated readings against
    the references of every OTHER clip whose gloss sequence differs (all such off-diagonal pairs, as one corpus);
    `bleu4_low` / `bleu4_high`: bootstrap interval of bleu4 (None below INTERVAL_MIN_CLIPS clips).
    Raises ValueError if the split has fewer than 2 distinct reference sequences (no floor)."""
    n = len(references)
    if len(readings) != n or len(real_readings) != n:
        raise ValueError(f"{len(readings)} readings and {len(real_readings)} real readings for {n} references")
    keys = [tuple(r) for r in references]
    pairs = [(j, i) for j in range(n) for i in range(n) if keys[j] != keys[i]]
    if not pairs:
        raise ValueError(f"back-translation needs at least 2 different reference gloss sequences for its floor, got "
                         f"{len(set(keys))} in {n} clips")
    out = dict(scores(readings, references))
    out.update({f"{k}_ceiling": v for k, v in scores(real_readings, references).items()})
    floor = scores([readings[j] for j, _ in pairs], [references[i] for _, i in pairs])
    out.update({f"{k}_floor": v for k, v in floor.items()})
    if n >= INTERVAL_MIN_CLIPS:
        out["bleu4_low"], out["bleu4_high"] = bleu4_interval(readings, references)
    else:
        out["bleu4_low"] = out["bleu4_high"] = None
    return out
