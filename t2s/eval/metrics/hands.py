"""Sign fidelity on synthsign: coloured hands found in rendered frames, their detection rate, and dynamic time
warping of hand tracks (DTW mean joint error).

Rules: frames are ``(F, H, W, 3)`` uint8 RGB; a keypoint track is ``(F, n_hands, 2)`` pixel coordinates (x = column,
y = row) with NaN where a hand is missing; the joint error is measured on the frames where a hand is found and the
detection rate says how often that is. Numpy and scipy only;
imports nothing from t2s.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
HAND_COLOR_TOLERANCE = 60.0  # RGB distance: a pixel within it of a hand's colour is that hand


def find_hands(frames, hand_colors: dict, tolerance: float = HAND_COLOR_TOLERANCE, min_pixels: int = 4):
    """Locate coloured hands in rendered frames.

    frames: (F, H, W, 3) uint8 RGB. hand_colors: name -> (r, g, b), e.g. synthsign's
    ``{"left": (255, 0, 200), "right": (0, 200, 255)}``; the output's hand axis follows the dict's order.
    A pixel belongs to a hand when its Euclidean RGB distance to the hand colour is <= ``tolerance``.
    The keypoint is the centroid (x = column, y = row, pixel centres at integer coordinates) of the largest
    8-connected component of such pixels -- stray pixels of a similar colour elsewhere do not pull it -- and
    a hand counts as found when that component has at least ``min_pixels`` pixels.
    Returns keypoints (F, n_hands, 2) float32 with NaN where a hand was not found, found_mask (F, n_hands).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (F, H, W, 3), got {frames.shape}")
    keypoints = np.full((len(frames), len(hand_colors), 2), np.nan, dtype=np.float32)
    pixels = frames.astype(np.float32)
    for h, color in enumerate(hand_colors.values()):
        masks = np.linalg.norm(pixels - np.asarray(color, np.float32), axis=-1) <= tolerance
        for f, mask in enumerate(masks):
            labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            if count == 0:
                continue
            sizes = np.bincount(labels.ravel())[1:]
            largest = int(np.argmax(sizes)) + 1
            if sizes[largest - 1] >= min_pixels:
                rows, cols = np.nonzero(labels == largest)
                keypoints[f, h] = cols.mean(), rows.mean()
    return keypoints, ~np.isnan(keypoints[..., 0])


def hand_detection_rate(found_mask) -> float:
    """Fraction of (frame, hand) slots in which a hand was found: found_mask (F, n_hands) bool."""
    return float(np.asarray(found_mask, dtype=bool).mean())


def dtw(a, b, dist: Callable, normalize: str = "path") -> float:
    """Dynamic time warping cost between sequences ``a`` (n items) and ``b`` (m items).

    Classic O(nm) dynamic programme with steps (1,0), (0,1), (1,1):
    ``D[i, j] = dist(a[i], b[j]) + min(D[i-1, j], D[i, j-1], D[i-1, j-1])``, both ends aligned.
    ``normalize="path"`` (default) returns D[n-1, m-1] divided by the number of aligned pairs on the optimal
    path (backtracked, ties broken diagonal first), i.e. the mean cost per aligned pair: 0 for a
    time-stretched copy, c for a constant offset of size c. ``normalize="reference"`` divides by
    ``len(a)`` instead, as the DTW-MJE evaluation code of Saunders et al., "Progressive Transformers for
    End-to-End Sign Language Production" (ECCV 2020; ``calculate_dtw`` in BenSaunders27/
    ProgressiveTransformersSLP, reference first) does.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("dtw needs two non-empty sequences")
    return dtw_from_cost(np.array([[dist(x, y) for y in b] for x in a], dtype=np.float64), normalize)


def dtw_from_cost(cost: np.ndarray, normalize: str = "path") -> float:
    """`dtw` from a precomputed cost matrix (n, m): cost[i, j] = dist(a[i], b[j])."""
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError("dtw needs two non-empty sequences")
    rows, inf = cost.tolist(), float("inf")
    acc = [[0.0] + [inf] * m] + [[inf] * (m + 1) for _ in range(n)]  # Python floats: ~5x faster than numpy scalars
    for i in range(1, n + 1):
        above, here, row = acc[i - 1], acc[i], rows[i - 1]
        for j in range(1, m + 1):
            here[j] = row[j - 1] + min(above[j - 1], above[j], here[j - 1])
    acc = np.array(acc)
    if normalize == "reference":
        return float(acc[n, m] / n)
    if normalize != "path":
        raise ValueError(f"normalize must be 'path' or 'reference', got {normalize!r}")
    return float(acc[n, m] / _path_length(acc))


def _path_length(acc: np.ndarray) -> int:
    """Number of pairs on the optimal path through an accumulated-cost matrix with an inf border."""
    i, j, length = acc.shape[0] - 1, acc.shape[1] - 1, 1
    while (i, j) != (1, 1):
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]  # diagonal first on ties
        i, j = min(steps, key=lambda s: acc[s])
        length += 1
    return length


def dtw_joint_error(pred_kp, gt_kp, body_size: float) -> float:
    """DTW mean joint error between predicted and ground-truth hand tracks over the frames where the hand is found,
    in units of ``body_size``; NaN when no hand is found in both tracks.

    pred_kp, gt_kp: (F, n_hands, 2) pixel coordinates, NaN where a hand is missing (``find_hands``).
    Keypoints are divided by ``body_size`` (e.g. the image size). Each hand is scored on its own: its track in the
    frames where it was found in the prediction is aligned by ``dtw`` (path-normalised, Euclidean distance) with its
    track in the frames where the ground truth shows it, and the result is the mean over the hands found in both.
    A missed frame is left out, never charged: the error measures where the found hands are (the mean joint error of
    SLP papers), and how often they are found is `hand_detection_rate`'s to say.
    """
    if body_size <= 0:
        raise ValueError(f"body_size must be positive, got {body_size}")
    pred = np.asarray(pred_kp, np.float64) / body_size
    gt = np.asarray(gt_kp, np.float64) / body_size
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"expected tracks (F, n_hands, 2) with the same hands, got {pred.shape} and {gt.shape}")
    errors = []
    for h in range(pred.shape[1]):
        p, g = pred[:, h], gt[:, h]
        p, g = p[np.isfinite(p).all(-1)], g[np.isfinite(g).all(-1)]
        if len(p) and len(g):
            errors.append(dtw_from_cost(np.linalg.norm(g[:, None] - p[None], axis=-1)))
    return float(np.mean(errors)) if errors else float("nan")
