"""``builtin:shapes``: procedural gray 28x28 images of shapes and strokes, made from a seed (no package, no file).

Why: a headless ancestry is condensed by distilling its features on images, and what the images show bounds
what the learngene learns (condensed on Fashion-MNIST's clothes, a DINOv2 learngene probes digits at 0.67-0.72
of the backbone with 10 shots, but clothes at 0.91-0.95). Users whose target is unlike any dataset they may
condense on need generic images: this set draws edges, corners, curves, thin strokes and thick blobs, occluding
one another, in the MNISTs' form (bright on dark, anti-aliased, 28x28, uint8). It holds no digit, letter or
photograph: every image is a few random primitives. Measured (docs/quality_backbone.md, pass 31): joined to
Fashion-MNIST it did not raise the DINOv2 learngene's MNIST probe (-0.017 against Fashion-MNIST alone at the same
steps, 10 shots, 5 seeds): generic strokes are no stand-in for digits there. It stays a dataset a user may pick.

Each image: a dark background (flat or a gentle gradient), one to four primitives of any kind, then one more
whose kind is the image's label (:data:`KINDS`): the label is what is drawn on top, so the task is learnable
but no class is anything's but a shape's. Primitives are anti-aliased by their distance to the edge (half a
pixel of ramp). Generation is vectorized over a chunk of images per primitive kind; 70,000 images take a few
seconds and are the same on every machine for the same seed (numpy's PCG64).
"""
from __future__ import annotations

import numpy as np

SIZE = 28
#: Images of the training split and of the test split (the MNISTs' counts).
TRAIN_COUNT, TEST_COUNT = 60_000, 10_000
TRAIN_SEED, TEST_SEED = 0, 1
#: Most primitives under the labelled one.
MAX_UNDER = 4
_CHUNK = 4096
_CURVE_POINTS = 16


def generate(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8, (count, 28, 28)) and their int64 labels (indices into :data:`KINDS`)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.Generator(np.random.PCG64(seed))
    images = np.empty((count, SIZE, SIZE), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        canvas, top = _chunk(rng, n)
        images[start:start + n] = np.rint(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)
        labels[start:start + n] = top
    return images, labels


def _chunk(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    canvas = _background(rng, n, yy, xx)
    under = rng.integers(1, MAX_UNDER + 1, size=n)
    for layer in range(MAX_UNDER):
        kinds = rng.integers(0, len(KINDS), size=n)
        _draw(rng, canvas, kinds, layer < under, yy, xx)
    top = rng.integers(0, len(KINDS), size=n)
    _draw(rng, canvas, top, np.ones(n, dtype=bool), yy, xx, labelled=True)
    return canvas, top


def _background(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    level = rng.uniform(0.0, 0.2, size=(n, 1, 1)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    slope = (rng.uniform(0.0, 0.15, size=(n, 1, 1)) * (rng.random((n, 1, 1)) < 0.5)).astype(np.float32)
    ramp = ((np.cos(angle) * xx + np.sin(angle) * yy) / SIZE).astype(np.float32)
    return level + slope * (ramp - ramp.mean(axis=(1, 2), keepdims=True))


def _draw(rng: np.random.Generator, canvas: np.ndarray, kinds: np.ndarray, active: np.ndarray, yy: np.ndarray,
          xx: np.ndarray, labelled: bool = False) -> None:
    """Composite one primitive per image where ``active``, of the kind ``kinds`` says, over ``canvas``."""
    for k, kind in enumerate(KINDS):
        rows = np.flatnonzero(active & (kinds == k))
        if rows.size == 0:
            continue
        distance = _DISTANCE[kind](rng, rows.size, yy, xx, labelled)
        alpha = np.clip(0.5 - distance, 0.0, 1.0)
        # Bright on dark mostly (the MNISTs' form), sometimes darker than what it covers (occlusion by shadow).
        value = rng.uniform(0.55, 1.0, size=(rows.size, 1, 1)).astype(np.float32)
        dark = rng.random((rows.size, 1, 1)) < (0.0 if labelled else 0.2)
        value = np.where(dark, rng.uniform(0.0, 0.25, size=value.shape).astype(np.float32), value)
        canvas[rows] = canvas[rows] * (1.0 - alpha) + value * alpha


def _centre(rng: np.random.Generator, n: int, labelled: bool) -> tuple[np.ndarray, np.ndarray]:
    spread = (6.0, SIZE - 6.0) if labelled else (2.0, SIZE - 2.0)
    return (rng.uniform(*spread, size=(n, 1, 1)).astype(np.float32),
            rng.uniform(*spread, size=(n, 1, 1)).astype(np.float32))


def _extent(rng: np.random.Generator, n: int, labelled: bool) -> np.ndarray:
    low, high = (5.0, 11.0) if labelled else (2.0, 9.0)
    return rng.uniform(low, high, size=(n, 1, 1)).astype(np.float32)


def _rotated(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray,
             labelled: bool) -> tuple[np.ndarray, np.ndarray]:
    cy, cx = _centre(rng, n, labelled)
    angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
    dy, dx = yy - cy, xx - cx
    return np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy


def _disc(rng, n, yy, xx, labelled):
    u, v = _rotated(rng, n, yy, xx, labelled)
    a = _extent(rng, n, labelled)
    b = a * rng.uniform(0.4, 1.0, size=(n, 1, 1)).astype(np.float32)
    # Distance to an ellipse's edge, approximated by the normalized radius scaled by the smaller semi-axis.
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * np.minimum(a, b)


def _box(rng, n, yy, xx, labelled):
    u, v = _rotated(rng, n, yy, xx, labelled)
    a = _extent(rng, n, labelled)
    b = a * rng.uniform(0.3, 1.0, size=(n, 1, 1)).astype(np.float32)
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


def _ring(rng, n, yy, xx, labelled):
    cy, cx = _centre(rng, n, labelled)
    radius = _extent(rng, n, labelled)
    width = rng.uniform(0.8, 2.5, size=(n, 1, 1)).astype(np.float32)
    return np.abs(np.hypot(yy - cy, xx - cx) - radius) - width


def _stroke_width(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.7, 2.2, size=(n, 1, 1)).astype(np.float32)


def _bar(rng, n, yy, xx, labelled):
    u, v = _rotated(rng, n, yy, xx, labelled)
    half = _extent(rng, n, labelled)
    # Distance to a segment along u from -half to +half: beyond its ends, to the nearer end.
    along = np.maximum(np.abs(u) - half, 0.0)
    return np.hypot(along, v) - _stroke_width(rng, n)


def _curve(rng, n, yy, xx, labelled):
    """A quadratic Bezier stroke; distance to it approximated by the nearest of its sampled points."""
    low, high = (4.0, SIZE - 4.0) if labelled else (0.0, SIZE)
    ends = rng.uniform(low, high, size=(n, 3, 2)).astype(np.float32)  # start, control, end; (y, x)
    t = np.linspace(0.0, 1.0, _CURVE_POINTS, dtype=np.float32)[None, :, None]
    points = ((1 - t) ** 2) * ends[:, :1] + 2 * (1 - t) * t * ends[:, 1:2] + (t ** 2) * ends[:, 2:]
    py, px = points[..., 0][:, :, None, None], points[..., 1][:, :, None, None]
    nearest = np.sqrt(((yy - py) ** 2 + (xx - px) ** 2).min(axis=1))
    return nearest - _stroke_width(rng, n)


def _triangle(rng, n, yy, xx, labelled):
    cy, cx = _centre(rng, n, labelled)
    radius = _extent(rng, n, labelled)
    angles = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)) + np.array([0.0, 2.1, 4.2]) \
        + rng.uniform(-0.4, 0.4, size=(n, 1, 3))
    vy = (cy[..., 0] + radius[..., 0] * np.sin(angles[:, 0])).astype(np.float32)  # (n, 3)
    vx = (cx[..., 0] + radius[..., 0] * np.cos(angles[:, 0])).astype(np.float32)
    # Signed distance outside each edge (vertices counter-clockwise by construction), the largest of the three.
    distance = np.full((n, SIZE, SIZE), -np.inf, dtype=np.float32)
    for i in range(3):
        j = (i + 1) % 3
        ey, ex = vy[:, j] - vy[:, i], vx[:, j] - vx[:, i]
        length = np.maximum(np.hypot(ey, ex), 1e-3)
        ny, nx = (-ex / length)[:, None, None], (ey / length)[:, None, None]
        side = (yy - vy[:, i, None, None]) * ny + (xx - vx[:, i, None, None]) * nx
        distance = np.maximum(distance, side)
    return distance


_DISTANCE = {"disc": _disc, "box": _box, "ring": _ring, "bar": _bar, "curve": _curve, "triangle": _triangle}
#: The kinds, in label order: one per distance function, so a kind cannot be named without being drawable.
KINDS = tuple(_DISTANCE)
