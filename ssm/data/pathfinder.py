"""LRA Pathfinder and Path-X: are the two circles joined by one contour?

Images follow the Pathfinder recipe (Kim*, Linsley* et al. 2020, ``drewlinsley/pathfinder``
``snakes2.py``) with LRA's per-resolution parameters (``lra_benchmarks/data/pathfinder.py``):
two target contours of ``contour_length`` short antialiased segments start ``seed_distance``
apart; each next segment turns by an angle drawn with weight ``cos(min(continuity * |turn|,
pi/2))**2``; ``num_distractors = base // (contour_length // 3)`` distractor contours of
``contour_length // 3`` segments fill the rest; two circles mark the start of one target and the
end of the same target (label 1) or of the other one (label 0).

Two deliberate differences from the original make the label checkable from the pixels alone:
segments are joined end to end (the original leaves a gap of twice the margin between them) and
different contours keep ``max(margin, thickness + 2.5)`` pixels apart, markers ``marker_radius +
thickness / 2 + 2.5`` from other contours. So the image's nonzero pixels, 8-connected, join the
markers exactly when the label is 1. Everything is drawn by a NumPy generator seeded with
``(seed, resolution, contour_length, index)``: one example is a pure function of its index and
can be made on demand (``pathfinder_example``). Even indices are negatives, odd positives.

For models an image is a sequence of l = resolution**2 pixels, d_input = 1, scaled to [-1, 1]
as S4 does (``Normalize(mean=0.5, std=0.5)``). Resolution 128 is Path-X.

``manual_dir`` reads LRA's release instead (``lra_release.gz``): ``<manual_dir>/pathfinder<r>/
<curv_baseline | curv_contour_length_9 | curv_contour_length_14>/metadata/<k>.npy``, text files
whose lines are ``<image dir> <file name> <index> <label> ...``, with the images at
``<difficulty>/<image dir>/<file name>``. Rows are read in order of ``k``, images that are missing
or empty are skipped (as LRA does) and the rest split 80% / 10% / 10% in order (LRA's split).
"""

import dataclasses
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from ssm.data.digits import _quiet_tfds
from ssm.data.registry import Dataset, DatasetSpec, register_dataset, resolve_data_dir

SPLITS = ("train", "validation", "test")
SIZES = {
    "full": (160_000, 20_000, 20_000),  # LRA's 200,000 images per resolution, split 80/10/10
    "small": (2_000, 200, 200),
    "tiny": (64, 32, 32),
}
RELEASE_DIRS = {6: "curv_baseline", 9: "curv_contour_length_9", 14: "curv_contour_length_14"}
_TRIES = 200  # attempts at the two target contours before giving up (never reached in practice)
_DISTRACTOR_TRIES = 5  # attempts per distractor; a distractor that never fits is left out
_SEGMENT_TRIES = 3  # orientations tried for a contour's first segment
_CANDIDATES = 24  # turning angles considered per segment


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Pathfinder parameters of one resolution (lengths in pixels).

    Attributes:
        paddle_length: drawn length of a paddle in the original; a segment here spans
            ``paddle_length + 2 * margin`` (the original's pivot-to-pivot step).
        thickness: line width.
        margins: the original's paddle margins, one drawn per image.
        seed_distance: distance between the starts of the two target contours.
        marker_radius: radius of the two circles.
        continuity: turning penalty; turns beyond pi / (2 * continuity) are never drawn.
        distractor_base: distractors = distractor_base // (contour_length // 3).
        contrast: line intensity relative to the markers (the image is scaled to max 255).
        padding: pixels kept free at the border.
    """

    paddle_length: float
    thickness: float
    margins: tuple[float, ...]
    seed_distance: float
    marker_radius: float
    continuity: float
    distractor_base: int
    contrast: float
    padding: float


RECIPES = {  # LRA's customisations of snakes2 (paddle_length 5 and padding 22 are its defaults)
    32: Recipe(2, 0.5, (1,), 7, 1.5, 1.0, 20, 1.5, 1),
    64: Recipe(5, 1.0, (1,), 12, 2.5, 1.8, 22, 0.8, 1),
    128: Recipe(5, 1.5, (2, 3), 20, 3, 1.8, 35, 0.9, 1),
    256: Recipe(5, 2.0, (3,), 27, 5, 1.8, 30, 1.0, 22),
}


@dataclasses.dataclass(frozen=True)
class PathfinderSample:
    """One generated example with the geometry behind it.

    Attributes:
        image: (r, r) uint8.
        label: 1 if both markers are on the same contour.
        markers: (2, 2) float (y, x) centres of the two circles.
        targets: (2, contour_length + 1, 2) float polylines of the two target contours.
        distractors: list of (k + 1, 2) float polylines.
    """

    image: np.ndarray
    label: int
    markers: np.ndarray
    targets: np.ndarray
    distractors: list[np.ndarray]


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points p to segments ab; (..., 2) arrays broadcast to (...)."""
    ab, ap = b - a, p - a
    t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1)


def _segment_distance(a, b, c, d) -> np.ndarray:
    """Distance between segments ab and cd; (..., 2) arrays broadcast to (...)."""
    dist = np.minimum(
        np.minimum(_point_segment_distance(a, c, d), _point_segment_distance(b, c, d)),
        np.minimum(_point_segment_distance(c, a, b), _point_segment_distance(d, a, b)),
    )
    crossing = (_cross(d - c, a - c) * _cross(d - c, b - c) < 0) & (
        _cross(b - a, c - a) * _cross(b - a, d - a) < 0
    )
    return np.where(crossing, 0.0, dist)


class _Canvas:
    """Placed segments (with their contour and step) and marker points, for clearance checks."""

    def __init__(self, resolution: int, recipe: Recipe, segment: float, clearance: float):
        self.low, self.high = recipe.padding, resolution - 1 - recipe.padding
        self.segment, self.clearance = segment, clearance
        self.tip_clearance = recipe.marker_radius + recipe.thickness / 2 + 2.5
        self.own_skip = math.ceil(clearance / segment) + 1  # own recent segments not checked
        self.a, self.b = np.zeros((0, 2)), np.zeros((0, 2))
        self.contour, self.step = np.zeros(0, int), np.zeros(0, int)
        self.tips, self.tip_contour = np.zeros((0, 2)), np.zeros(0, int)

    def free(self, a: np.ndarray, b: np.ndarray, contour: int, step: int) -> np.ndarray:
        """Which candidate segments a -> b (k, 2) may be drawn as ``step`` of ``contour``: (k,)."""
        ok = np.all((b >= self.low) & (b <= self.high), axis=-1)
        if len(self.a):
            dist = _segment_distance(a[:, None], b[:, None], self.a[None], self.b[None])
            exempt = (self.contour == contour) & (self.step >= step - self.own_skip)
            ok &= np.all((dist >= self.clearance) | exempt, axis=-1)
        if len(self.tips):
            dist = _point_segment_distance(self.tips[None], a[:, None], b[:, None])
            ok &= np.all((dist >= self.tip_clearance) | (self.tip_contour == contour), axis=-1)
        return ok

    def add(self, a: np.ndarray, b: np.ndarray, contour: int, step: int):
        self.a, self.b = np.vstack([self.a, a[None]]), np.vstack([self.b, b[None]])
        self.contour = np.append(self.contour, contour)
        self.step = np.append(self.step, step)

    def truncate(self, n: int):
        """Removes the segments after the first ``n``."""
        self.a, self.b, self.contour, self.step = (
            x[:n] for x in (self.a, self.b, self.contour, self.step)
        )

    def add_tip(self, p: np.ndarray, contour: int):
        self.tips = np.vstack([self.tips, p[None]])
        self.tip_contour = np.append(self.tip_contour, contour)

    def distance_to(self, p: np.ndarray, contours: np.ndarray) -> float:
        """Distance from point p to the segments of the given contours."""
        keep = np.isin(self.contour, contours)
        return float(np.min(_point_segment_distance(p, self.a[keep], self.b[keep]), initial=1e9))


def _direction(theta) -> np.ndarray:
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # (y, x)


class _Contour:
    """A growing polyline on a canvas."""

    def __init__(self, canvas: _Canvas, contour: int):
        self.canvas, self.contour, self.points, self.theta = canvas, contour, [], 0.0

    def start(self, rng: np.random.Generator, tail: np.ndarray) -> bool:
        """Draws the first segment from ``tail`` in a free random orientation."""
        for _ in range(_SEGMENT_TRIES):
            theta = rng.uniform(-np.pi, np.pi)
            head = tail + self.canvas.segment * _direction(theta)
            if self.canvas.free(tail[None], head[None], self.contour, 0)[0] and np.all(
                (tail >= self.canvas.low) & (tail <= self.canvas.high)
            ):
                self.canvas.add(tail, head, self.contour, 0)
                self.points, self.theta = [tail, head], theta
                return True
        return False

    def extend(self, rng: np.random.Generator, continuity: float) -> bool:
        """Draws one more segment, its turn weighted by continuity among free directions."""
        width = np.pi / continuity  # turns with nonzero weight: |turn| < pi / (2 continuity)
        turn = (np.arange(_CANDIDATES) + rng.random()) / _CANDIDATES * width - width / 2
        theta = self.theta + turn
        tail = self.points[-1]
        heads = tail + self.canvas.segment * _direction(theta)
        step = len(self.points) - 1
        weight = np.cos(np.minimum(np.abs(turn) * continuity, np.pi / 2)) ** 2
        weight *= self.canvas.free(np.broadcast_to(tail, heads.shape), heads, self.contour, step)
        if weight.sum() <= 0:
            return False
        k = rng.choice(_CANDIDATES, p=weight / weight.sum())
        self.canvas.add(tail, heads[k], self.contour, step)
        self.points.append(heads[k])
        self.theta = theta[k]
        return True


def _two_targets(rng, resolution, recipe, contour_length, segment, clearance):
    """Canvas and the two target contours (2, contour_length + 1, 2), or raises RuntimeError."""
    sd = recipe.seed_distance
    for _ in range(_TRIES):
        canvas = _Canvas(resolution, recipe, segment, clearance)
        tail1 = rng.uniform(2 * sd, resolution - 1 - 2 * sd, size=2)
        tail2 = tail1 + sd * _direction(rng.uniform(-np.pi, np.pi))
        canvas.add_tip(tail1, 0)
        canvas.add_tip(tail2, 1)
        contours = [_Contour(canvas, 0), _Contour(canvas, 1)]
        if not (contours[0].start(rng, tail1) and contours[1].start(rng, tail2)):
            continue
        grown = all(
            c.extend(rng, recipe.continuity) for _ in range(contour_length - 1) for c in contours
        )
        if not grown:
            continue
        ends = [c.points[-1] for c in contours]
        if all(canvas.distance_to(ends[k], [1 - k]) >= canvas.tip_clearance for k in (0, 1)):
            for k in (0, 1):
                canvas.add_tip(ends[k], k)
            return canvas, np.array([c.points for c in contours])
    raise RuntimeError(
        f"no two target contours fit at resolution {resolution} after {_TRIES} attempts"
    )


def _render(resolution: int, a, b, radius: float, value: float, image: np.ndarray):
    """Draws antialiased capsules a -> b (n, 2) of ``radius`` into ``image`` (r, r) by max."""
    if len(a) == 0:
        return
    window = int(np.ceil(np.max(np.abs(b - a)) + 2 * radius + 3))
    corner = np.floor(np.minimum(a, b) - radius - 1).astype(int)  # (n, 2)
    offsets = np.arange(window)
    ys = corner[:, 0, None, None] + offsets[None, :, None]  # (n, w, 1)
    xs = corner[:, 1, None, None] + offsets[None, None, :]  # (n, 1, w)
    ys, xs = np.broadcast_arrays(ys, xs)
    p = np.stack([ys, xs], -1).astype(float)
    dist = _point_segment_distance(p, a[:, None, None], b[:, None, None])
    ink = value * np.clip(radius + 0.5 - dist, 0.0, 1.0)
    keep = (ink > 0) & (ys >= 0) & (ys < resolution) & (xs >= 0) & (xs < resolution)
    np.maximum.at(image, (ys[keep], xs[keep]), ink[keep])


def pathfinder_sample(resolution: int, contour_length: int, index: int, seed: int):
    """The example ``index`` of a seed with its geometry (see the module docstring).

    Returns:
        A PathfinderSample; ``image`` is (resolution, resolution) uint8.
    """
    if resolution not in RECIPES:
        raise ValueError(
            f"resolution={resolution} is not valid; valid: {', '.join(map(str, RECIPES))}"
        )
    if contour_length < 3:
        raise ValueError(f"contour_length must be >= 3, got {contour_length}")
    recipe = RECIPES[resolution]
    rng = np.random.default_rng([seed, resolution, contour_length, index])
    margin = float(rng.choice(recipe.margins))
    segment = recipe.paddle_length + 2 * margin
    clearance = max(margin, recipe.thickness + 2.5)
    canvas, targets = _two_targets(rng, resolution, recipe, contour_length, segment, clearance)
    length = contour_length // 3
    distractors = []
    for i in range(recipe.distractor_base // length):
        placed = len(canvas.a)
        for _ in range(_DISTRACTOR_TRIES):
            contour = _Contour(canvas, 2 + i)
            tail = rng.uniform(recipe.padding, resolution - 1 - recipe.padding, size=2)
            if contour.start(rng, tail) and all(
                contour.extend(rng, recipe.continuity) for _ in range(length - 1)
            ):
                distractors.append(np.array(contour.points))
                break
            canvas.truncate(placed)
    label = index % 2
    origin = int(rng.integers(2))
    terminal = origin if label else 1 - origin
    markers = np.array([targets[origin][0], targets[terminal][-1]])
    ink = np.zeros((resolution, resolution))
    _render(resolution, canvas.a, canvas.b, recipe.thickness / 2, recipe.contrast, ink)
    _render(resolution, markers, markers, recipe.marker_radius, 1.0, ink)
    image = np.round(ink * (255 / max(recipe.contrast, 1.0))).astype(np.uint8)
    return PathfinderSample(image, label, markers, targets, distractors)


def pathfinder_example(
    resolution: int, contour_length: int, index: int, seed: int
) -> tuple[np.ndarray, int]:
    """Example ``index`` of ``seed``: (image (resolution, resolution) uint8, label)."""
    sample = pathfinder_sample(resolution, contour_length, index, seed)
    return sample.image, sample.label
