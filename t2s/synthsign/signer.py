"""SynthSign: a procedurally rendered 2D signer whose hand motion is determined by the caption's words.

A clip shows one signer (background, torso, head, two arms, two gloved hands) signing a caption. Each word is a
*gloss* (`t2s.synthsign.glosses`: the word tables, the signing-space anchors and paths, synonyms and filler words): a hand
trajectory (a few control points around an anchor in signing space, for one or both hands) and a hand shape per hand.
A caption's glosses (`glosses.gloss_sequence`) are concatenated into one Catmull-Rom spline through all their control
points, which is sampled uniformly in time at `num_frames` points. Unknown words map deterministically (by a hash of
the word) to a gloss-like fallback, so any caption renders. A `seed` adds small per-clip jitter to the control
points, so two clips of one caption by one signer differ slightly; everything is deterministic given the seed. A clip
is determined by its gloss sequence, not by its surface words: "thanks a lot" renders exactly as "thank you very much".

Coordinates are pixels of the rendered image: x = column, y = row, pixel centres at integers. Hands are drawn last
(on top of everything), without antialiasing, as point-symmetric stamps centred on integer pixels, never clipped by
the border, and never overlapping (the image-left hand stays in the left half, the image-right hand in the right
half). So the centroid of a hand colour's pixels equals the hand's keypoint exactly. Glove colours are the same for
every signer and no other drawn element has a colour within `MIN_COLOR_DISTANCE` (RGB Euclidean) of either.

Public: `render_clip`, `hand_trajectory`, `frame_gloss_index`, `signer_appearance`, `hand_stamps`, `hand_bounds`,
`HAND_COLORS`, `signer_name` / `signer_index`. The glosses it signs are `t2s.synthsign.glosses`' (imported from
there); it imports nothing else of t2s.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np

from t2s.synthsign.glosses import ANCHORS, PATHS, Gloss, gloss_for, gloss_sequence

# ---------------------------------------------------------------------------------------------- colours
HAND_COLORS: dict[str, tuple[int, int, int]] = {"left": (255, 0, 200), "right": (0, 200, 255)}
MIN_COLOR_DISTANCE = 120.0
HANDS = ("left", "right")  # keypoints[..., 0, :] is the image-left hand, [..., 1, :] the image-right hand

# Appearance palettes. Every colour (and every colour derived from one, e.g. a sleeve shade) stays at least
# MIN_COLOR_DISTANCE from both glove colours; `_check_palettes` asserts this at import.
BACKGROUNDS = [
    (235, 235, 225), (60, 60, 70), (200, 215, 170), (240, 220, 160),
    (120, 140, 120), (30, 50, 40), (180, 170, 200), (90, 70, 50),
]
SKINS = [
    (255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66),
    (141, 85, 36), (92, 51, 23), (255, 205, 148), (160, 110, 80),
]
SHIRTS = [
    (40, 60, 140), (170, 30, 30), (40, 120, 50), (20, 20, 20),
    (220, 180, 40), (230, 120, 30), (130, 130, 130), (245, 245, 245), (90, 40, 110), (0, 110, 110),
]
HAIRS = [(30, 20, 10), (90, 60, 30), (200, 170, 90), (150, 40, 20), (120, 120, 120), (10, 10, 10)]
EYE_COLOR = (25, 25, 25)


def color_distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def _sleeve(shirt: tuple[int, int, int]) -> tuple[int, int, int]:
    """The sleeve shade: darker than the shirt (lighter for very dark shirts) so an arm in front of the torso shows."""
    rgb = np.asarray(shirt, dtype=np.float64)
    shade = rgb * 0.65 if rgb.mean() > 60 else rgb + 55
    return tuple(int(round(c)) for c in np.clip(shade, 0, 255))


def _check_palettes() -> None:
    colours = BACKGROUNDS + SKINS + SHIRTS + [_sleeve(s) for s in SHIRTS] + HAIRS + [EYE_COLOR]
    for colour in colours:
        for hand, glove in HAND_COLORS.items():
            d = color_distance(colour, glove)
            assert d >= MIN_COLOR_DISTANCE, f"palette colour {colour} is {d:.0f} from the {hand} glove {glove}"


_check_palettes()


# ---------------------------------------------------------------------------------------------- signers
@dataclass(frozen=True)
class SignerAppearance:
    """How one signer looks. Lengths are fractions of the image size, so a signer looks alike at every size."""

    background: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    sleeve: tuple[int, int, int]
    center_x: float  # body midline
    head_y: float  # head centre
    head_radius: float
    shoulder_y: float
    shoulder_half_width: float
    arm_width: float  # arm thickness (diameter)
    upper_arm: float
    forearm: float

    def colors(self) -> list[tuple[int, int, int]]:
        return [self.background, self.skin, self.hair, self.shirt, self.sleeve, EYE_COLOR]


def signer_name(signer: int) -> str:
    """'signer03' for signer 3: the id the dataset files carry (file name up to the first '_')."""
    return f"signer{int(signer):02d}"


def signer_index(name: str) -> int:
    """Inverse of `signer_name` ('signer03' -> 3)."""
    match = re.fullmatch(r"signer(\d+)", name)
    if not match:
        raise ValueError(f"signer name {name!r} is not of the form 'signer<number>' (e.g. 'signer03')")
    return int(match.group(1))


@functools.lru_cache(maxsize=None)
def signer_appearance(signer: int) -> SignerAppearance:
    """The appearance of signer `signer` (any integer >= 0; deterministic).

    Colours cycle through the palettes with co-prime strides, so the first 8 signers all differ in background, skin
    and shirt; proportions (head size and height, shoulder width and height, arm thickness and length, body offset)
    are drawn from a generator seeded by the signer index.
    """
    if signer < 0:
        raise ValueError(f"signer must be a non-negative integer, got {signer}")
    rng = np.random.default_rng([int(signer), 0x5167])
    shirt = SHIRTS[(3 * signer + 1) % len(SHIRTS)]
    head_radius = rng.uniform(0.095, 0.125)
    head_y = rng.uniform(0.19, 0.24)
    shoulder_y = head_y + head_radius + rng.uniform(0.11, 0.16)
    return SignerAppearance(
        background=BACKGROUNDS[signer % len(BACKGROUNDS)],
        skin=SKINS[(5 * signer + 2) % len(SKINS)],
        hair=HAIRS[(signer + signer // len(HAIRS)) % len(HAIRS)],
        shirt=shirt,
        sleeve=_sleeve(shirt),
        center_x=0.5 + rng.uniform(-0.04, 0.04),
        head_y=head_y,
        head_radius=head_radius,
        shoulder_y=shoulder_y,
        shoulder_half_width=rng.uniform(0.15, 0.22),
        arm_width=rng.uniform(0.055, 0.08),
        upper_arm=rng.uniform(0.19, 0.25),
        forearm=rng.uniform(0.18, 0.24),
    )


# ---------------------------------------------------------------------------------------------- hand stamps
def hand_radius(image_size: int) -> float:
    """The glove's nominal radius in pixels at this image size."""
    return max(1.0, 0.075 * image_size)


@functools.lru_cache(maxsize=None)
def hand_stamps(image_size: int) -> tuple[int, dict[str, np.ndarray]]:
    """(extent e, {shape: bool mask (2e+1, 2e+1)}) — each mask is point-symmetric about its centre pixel."""
    r = hand_radius(image_size)
    e = int(math.ceil(1.3 * r))
    d = np.arange(-e, e + 1, dtype=np.float64)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    thin = max(0.5, 0.4 * r)
    stamps = {
        "circle": dx**2 + dy**2 <= r**2,
        "square": (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r),
        "diamond": np.abs(dx) + np.abs(dy) <= 1.2 * r,
        "wide": (dx / (1.3 * r)) ** 2 + (dy / (0.7 * r)) ** 2 <= 1.0,
        "tall": (dx / (0.7 * r)) ** 2 + (dy / (1.3 * r)) ** 2 <= 1.0,
        "plus": ((np.abs(dx) <= 1.2 * r) & (np.abs(dy) <= thin)) | ((np.abs(dy) <= 1.2 * r) & (np.abs(dx) <= thin)),
    }
    for name, mask in stamps.items():
        mask.setflags(write=False)
        assert mask[e, e] and np.array_equal(mask, mask[::-1, ::-1]), name
    return e, stamps


def hand_bounds(image_size: int) -> dict[str, tuple[int, int, int, int]]:
    """Allowed integer hand centres per hand: (x_min, x_max, y_min, y_max), inclusive.

    The left hand's pixels stay in columns < image_size // 2 and the right hand's in columns >= image_size // 2, so
    the hands never overlap; every hand pixel stays inside the frame.
    """
    e, _ = hand_stamps(image_size)
    half = image_size // 2
    lo_y, hi_y = e, image_size - 1 - e
    left = (e, max(e, half - 1 - e))
    right = (min(image_size - 1 - e, half + e), image_size - 1 - e)
    return {"left": (*left, lo_y, hi_y), "right": (*right, lo_y, hi_y)}


# ---------------------------------------------------------------------------------------------- trajectories
REST = {"left": (-0.55, 0.95), "right": (0.55, 0.95)}
POINTS_PER_GLOSS = 4


def _gloss_control_points(gloss: Gloss, amplitude: float) -> np.ndarray:
    """Control points (POINTS_PER_GLOSS, 2 hands, 2 (u, v)) of one gloss in signing space."""
    anchor = np.asarray(ANCHORS[gloss.anchor])
    path = anchor + amplitude * PATHS[gloss.path]  # written for the right hand
    mirror = path * np.array([-1.0, 1.0])
    rest = {hand: np.tile(REST[hand], (POINTS_PER_GLOSS, 1)) for hand in HANDS}
    left, right = {
        "right": (rest["left"], path),
        "left": (mirror, rest["right"]),
        "both": (mirror, path),
        "alt": (mirror[::-1], path),
    }[gloss.hands]
    return np.stack([left, right], axis=1)


def _gloss_shapes(gloss: Gloss) -> tuple[str, str]:
    """(left hand shape, right hand shape) of a gloss: the dominant shape goes on the moving (dominant) hand."""
    dominant, other = gloss.shapes
    return (dominant, other) if gloss.hands == "left" else (other, dominant)


def _catmull_rom(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Uniform Catmull-Rom spline through `points` (N, ...) evaluated at float `params` in [0, N-1] -> (len, ...)."""
    n = len(points)
    if n == 1:
        return np.repeat(points, len(params), axis=0)
    i = np.clip(np.floor(params).astype(int), 0, n - 2)
    t = (params - i).reshape((-1,) + (1,) * (points.ndim - 1))
    p0, p1 = points[np.clip(i - 1, 0, n - 1)], points[i]
    p2, p3 = points[i + 1], points[np.clip(i + 2, 0, n - 1)]
    return 0.5 * (
        2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )


def _to_pixels(uv: np.ndarray, look: SignerAppearance, image_size: int) -> np.ndarray:
    """Signing-space (..., 2 hands, (u, v)) -> float pixel (x, y) for this signer."""
    reach_x = (look.shoulder_half_width + 0.15) * image_size
    reach_y = (look.shoulder_y - (look.head_y - look.head_radius)) * image_size
    x = look.center_x * image_size + uv[..., 0] * reach_x
    y = look.shoulder_y * image_size + uv[..., 1] * reach_y
    return np.stack([x, y], axis=-1)


def hand_trajectory(
    caption: str, signer: int, num_frames: int, image_size: int, seed: int = 0
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Ground-truth hand centres and shapes of a caption signed by `signer`, without rendering.

    Returns (keypoints float32 (F, 2, 2): [f, 0] = left hand (x, y), [f, 1] = right hand (x, y), integer-valued
    pixel coordinates; shapes: F pairs (left shape, right shape)). `render_clip` draws exactly these.
    """
    if num_frames < 1 or image_size < 8:
        raise ValueError(f"need num_frames >= 1 and image_size >= 8, got {num_frames} and {image_size}")
    glosses = [gloss_for(g) for g in gloss_sequence(caption)] or [Gloss("hold", "waist", "right", ("circle", "circle"))]
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x7A5])
    amplitude = rng.uniform(0.85, 1.15)
    points = np.concatenate([_gloss_control_points(g, amplitude) for g in glosses])  # (G*K, 2, 2)
    points = points + rng.normal(0.0, 0.03, size=points.shape)
    last = len(points) - 1
    params = np.linspace(0.0, last, num_frames) if num_frames > 1 else np.zeros(1)
    uv = _catmull_rom(points, params)  # (F, 2, 2)
    xy = _to_pixels(uv, signer_appearance(signer), image_size)
    bounds = hand_bounds(image_size)
    for h, hand in enumerate(HANDS):
        x_min, x_max, y_min, y_max = bounds[hand]
        xy[:, h, 0] = np.clip(np.round(xy[:, h, 0]), x_min, x_max)
        xy[:, h, 1] = np.clip(np.round(xy[:, h, 1]), y_min, y_max)
    shapes = [_gloss_shapes(glosses[g]) for g in frame_gloss_index(len(glosses), num_frames)]
    return xy.astype(np.float32), shapes


def frame_gloss_index(num_glosses: int, num_frames: int) -> np.ndarray:
    """Which gloss each frame shows (int (num_frames,), indices into the gloss sequence): the frames sample the spline
    uniformly, and a gloss owns the stretch from its first control point to the next gloss's first one."""
    last = num_glosses * POINTS_PER_GLOSS - 1
    params = np.linspace(0.0, last, num_frames) if num_frames > 1 else np.zeros(1)
    return np.minimum(np.floor(params / POINTS_PER_GLOSS + 1e-9).astype(int), num_glosses - 1)


# ---------------------------------------------------------------------------------------------- drawing
def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (ys (S, 1), xs (1, S))."""
    c = np.arange(image_size, dtype=np.float64)
    return c[:, None], c[None, :]


def _ellipse(ys, xs, cx, cy, rx, ry) -> np.ndarray:
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def _segment_distance2(xs, ys, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Squared distance from pixel centres (xs (1, W), ys (H, 1)) to the segment p0-p1 -> (H, W)."""
    d = p1 - p0
    length2 = float(d @ d)
    t = 0.0 if length2 == 0 else np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / length2, 0.0, 1.0)
    return (xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2


def _paint_limb(canvas: np.ndarray, joints: np.ndarray, radius: float, colour) -> None:
    """Paint the pixels within `radius` of the polyline through `joints` (J, 2) of pixel (x, y) points, clipped to
    the canvas; only the polyline's bounding box is evaluated."""
    size = canvas.shape[0]
    x0 = max(0, int(math.floor(joints[:, 0].min() - radius)))
    x1 = min(size, int(math.ceil(joints[:, 0].max() + radius)) + 1)
    y0 = max(0, int(math.floor(joints[:, 1].min() - radius)))
    y1 = min(size, int(math.ceil(joints[:, 1].max() + radius)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    dist2 = np.minimum.reduce([_segment_distance2(xs, ys, a, b) for a, b in zip(joints[:-1], joints[1:])])
    canvas[y0:y1, x0:x1][dist2 <= radius**2] = colour


@functools.lru_cache(maxsize=64)
def _body(signer: int, image_size: int) -> np.ndarray:
    """The static part of a frame (background, torso, neck, head, hair, eyes): uint8 (S, S, 3), read-only."""
    look = signer_appearance(signer)
    s = image_size
    ys, xs = _grid(s)
    canvas = np.empty((s, s, 3), dtype=np.uint8)
    canvas[:] = look.background
    cx, head_y, head_r = look.center_x * s, look.head_y * s, look.head_radius * s
    shoulder_y, half_w = look.shoulder_y * s, look.shoulder_half_width * s
    torso = (np.abs(xs - cx) <= half_w) & (ys >= shoulder_y)
    for side in (-1, 1):  # rounded shoulders
        torso |= _ellipse(ys, xs, cx + side * (half_w - 0.06 * s), shoulder_y + 0.06 * s, 0.06 * s, 0.06 * s)
    canvas[torso] = look.shirt
    neck = (np.abs(xs - cx) <= max(0.5, 0.35 * head_r)) & (ys >= head_y) & (ys <= shoulder_y)
    canvas[neck] = look.skin
    canvas[_ellipse(ys, xs, cx, head_y - 0.12 * head_r, 0.95 * head_r, 0.98 * head_r)] = look.hair
    canvas[_ellipse(ys, xs, cx, head_y + 0.08 * head_r, 0.82 * head_r, 0.9 * head_r)] = look.skin
    eye_y = int(round(head_y))
    for side in (-1, 1):
        eye_x = int(round(cx + side * 0.35 * head_r))
        if 0 <= eye_y < s and 0 <= eye_x < s:
            canvas[eye_y, eye_x] = EYE_COLOR
    canvas.setflags(write=False)
    return canvas


def _shoulders(look: SignerAppearance, image_size: int) -> np.ndarray:
    """Shoulder joints (2 hands, (x, y)) in pixels: index 0 for the image-left arm."""
    s = image_size
    dx = (look.shoulder_half_width - 0.03) * s
    y = (look.shoulder_y + 0.03) * s
    return np.array([[look.center_x * s - dx, y], [look.center_x * s + dx, y]])


def _elbow(shoulder: np.ndarray, hand: np.ndarray, upper: float, fore: float, side: int) -> np.ndarray:
    """Two-link inverse kinematics: the elbow bends outward (`side` -1 for the image-left arm, +1 right)."""
    v = hand - shoulder
    d = float(np.hypot(*v))
    if d >= upper + fore or d < 1e-6:
        return shoulder + (v * upper / (upper + fore) if d >= 1e-6 else np.array([0.0, upper]))
    a = min(upper, max(-upper, (upper**2 - fore**2 + d**2) / (2 * d)))  # |a| > upper: hand very close
    k = math.sqrt(max(upper**2 - a**2, 0.0))
    direction = v / d
    perp = np.array([-direction[1], direction[0]])
    if perp[0] * side < 0 or (perp[0] == 0 and perp[1] < 0):
        perp = -perp
    return shoulder + a * direction + k * perp


def render_clip(
    caption: str, signer: int, num_frames: int, image_size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render `caption` signed by signer `signer`.

    Returns (frames uint8 (F, H, W, 3) with H = W = image_size, keypoints float32 (F, 2, 2)); keypoints[f, 0] is
    the left (magenta) hand's centre (x, y) in pixels, keypoints[f, 1] the right (cyan) hand's. Each keypoint is
    exactly the centroid of that glove colour's pixels in the frame.
    """
    keypoints, shapes = hand_trajectory(caption, signer, num_frames, image_size, seed)
    look = signer_appearance(signer)
    body = _body(signer, image_size)
    shoulders = _shoulders(look, image_size)
    arm_radius = max(0.5, 0.5 * look.arm_width * image_size)
    upper, fore = look.upper_arm * image_size, look.forearm * image_size
    e, stamps = hand_stamps(image_size)
    frames = np.empty((num_frames, image_size, image_size, 3), dtype=np.uint8)
    for f in range(num_frames):
        frame = frames[f]
        frame[:] = body
        for h, side in enumerate((-1, 1)):
            hand = keypoints[f, h].astype(np.float64)
            elbow = _elbow(shoulders[h], hand, upper, fore, side)
            _paint_limb(frame, np.stack([shoulders[h], elbow, hand]), arm_radius, look.sleeve)
        for h, hand_name in enumerate(HANDS):  # gloves last, on top of everything
            x, y = int(keypoints[f, h, 0]), int(keypoints[f, h, 1])
            frame[y - e : y + e + 1, x - e : x + e + 1][stamps[shapes[f][h]]] = HAND_COLORS[hand_name]
    return frames, keypoints
