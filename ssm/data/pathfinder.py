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
_BACKTRACKS = 100  # growth steps and take-backs per attempt at the target contours
_RETRACT = 7  # a stuck target contour takes back 1.._RETRACT segments
_SEGMENT_TRIES = 3  # orientations tried for a target contour's first segment
_SEEDS = 16  # random starts tried at once for a distractor
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


# Geometry works on complex points z = x + iy, so that vector maths is one array operation.


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u.conj() * v).imag


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from complex points p to segments ab (arrays broadcast together)."""
    ab, ap = b - a, p - a
    t = np.clip((ap * ab.conj()).real / np.maximum((ab * ab.conj()).real, 1e-12), 0.0, 1.0)
    return np.abs(ap - t * ab)


def _segment_distance(a, b, c, d) -> np.ndarray:
    """Distance between complex segments ab and cd (arrays broadcast together)."""
    a, b, c, d = np.broadcast_arrays(a, b, c, d)
    ends, starts, stops = np.stack([a, b, c, d]), np.stack([c, c, a, a]), np.stack([d, d, b, b])
    dist = _point_segment_distance(ends, starts, stops).min(axis=0)
    crossing = (_cross(d - c, a - c) * _cross(d - c, b - c) < 0) & (
        _cross(b - a, c - a) * _cross(b - a, d - a) < 0
    )
    return np.where(crossing, 0.0, dist)


class _Canvas:
    """Placed segments (with their contour and step) and marker points, for clearance checks.

    A target contour keeps ``clearance`` from every other contour and ``tip_clearance`` from the
    other target's markers; segments of one contour, and of two distractors, keep ``margin``.
    Points are complex, z = x + iy.
    """

    def __init__(self, resolution: int, recipe: Recipe, segment: float, margin: float):
        self.low, self.high = recipe.padding, resolution - 1 - recipe.padding
        self.segment, self.margin = segment, margin
        self.clearance = max(margin, recipe.thickness + 2.5)
        self.tip_clearance = recipe.marker_radius + recipe.thickness / 2 + 2.5
        self.marker_gap = 2 * recipe.marker_radius + 2.5  # between two markers' centres
        self.a, self.b = np.zeros(0, complex), np.zeros(0, complex)
        self.contour, self.step = np.zeros(0, int), np.zeros(0, int)
        self.tips, self.tip_contour = np.zeros(0, complex), np.zeros(0, int)

    def inside(self, z: np.ndarray) -> np.ndarray:
        return (
            (z.real >= self.low)
            & (z.real <= self.high)
            & (z.imag >= self.low)
            & (z.imag <= self.high)
        )

    def free(self, tails: np.ndarray, heads: np.ndarray, contour: int, step: int) -> np.ndarray:
        """Which candidate segments tails -> heads (k,) may be ``step`` of ``contour``: (k,)."""
        ok = self.inside(tails) & self.inside(heads)
        # Only segments near a tail can come within clearance of its candidate.
        near = (self.contour != contour) | (self.step != step - 1)  # not the joined predecessor
        reach = _point_segment_distance(np.atleast_1d(tails)[:, None], self.a, self.b)
        near &= reach.min(axis=0, initial=1e9) < self.segment + self.clearance
        tails = np.broadcast_to(tails, heads.shape)
        if near.any():
            others = self.contour[near]
            distractors = (others >= 2) & (contour >= 2)
            needed = np.where((others == contour) | distractors, self.margin, self.clearance)
            dist = _segment_distance(tails[:, None], heads[:, None], self.a[near], self.b[near])
            ok &= np.all(dist >= needed, axis=-1)
        if len(self.tips):
            dist = _point_segment_distance(self.tips, tails[:, None], heads[:, None])
            ok &= np.all((dist >= self.tip_clearance) | (self.tip_contour == contour), axis=-1)
        return ok

    def add(self, a: complex, b: complex, contour: int, step: int):
        self.a, self.b = np.append(self.a, a), np.append(self.b, b)
        self.contour, self.step = np.append(self.contour, contour), np.append(self.step, step)

    def remove(self, contour: int, first_step: int = 0):
        """Removes the segments of ``contour`` from step ``first_step`` on."""
        keep = (self.contour != contour) | (self.step < first_step)
        self.a, self.b, self.contour, self.step = (
            x[keep] for x in (self.a, self.b, self.contour, self.step)
        )

    def add_tip(self, z: complex, contour: int):
        self.tips = np.append(self.tips, z)
        self.tip_contour = np.append(self.tip_contour, contour)

    def distance_to(self, z: complex, contour: int) -> float:
        """Distance from point z to the segments of ``contour``."""
        keep = self.contour == contour
        return float(np.min(_point_segment_distance(z, self.a[keep], self.b[keep]), initial=1e9))


def _sample(rng: np.random.Generator, weight: np.ndarray) -> int | None:
    """An index drawn with probability proportional to ``weight``, or None if all are 0."""
    cumulative = np.cumsum(weight)
    if cumulative[-1] <= 0:
        return None
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


class _Contour:
    """A growing polyline on a canvas."""

    def __init__(self, canvas: _Canvas, contour: int):
        self.canvas, self.contour, self.points, self.thetas = canvas, contour, [], []

    def start(self, rng: np.random.Generator, tails: np.ndarray) -> bool:
        """Draws the first segment from the first of ``tails`` (k,) that has room for it."""
        thetas = rng.uniform(-np.pi, np.pi, len(tails))
        heads = tails + self.canvas.segment * np.exp(1j * thetas)
        ok = np.flatnonzero(self.canvas.free(tails, heads, self.contour, 0))
        if len(ok) == 0:
            return False
        k = ok[0]
        self.canvas.add(tails[k], heads[k], self.contour, 0)
        self.points, self.thetas = [tails[k], heads[k]], [thetas[k]]
        return True

    def extend(self, rng: np.random.Generator, continuity: float) -> bool:
        """Draws one more segment, its turn weighted by continuity among free directions."""
        width = np.pi / continuity  # turns with nonzero weight: |turn| < pi / (2 continuity)
        turn = (np.arange(_CANDIDATES) + rng.random()) / _CANDIDATES * width - width / 2
        theta = self.thetas[-1] + turn
        tail = self.points[-1]
        heads = tail + self.canvas.segment * np.exp(1j * theta)
        step = len(self.thetas)
        weight = np.cos(np.minimum(np.abs(turn) * continuity, np.pi / 2)) ** 2
        k = _sample(rng, weight * self.canvas.free(tail, heads, self.contour, step))
        if k is None:
            return False
        self.canvas.add(tail, heads[k], self.contour, step)
        self.points.append(heads[k])
        self.thetas.append(theta[k])
        return True

    def retract(self, n: int):
        """Takes back the last ``n`` segments."""
        keep = max(0, len(self.thetas) - n)
        self.canvas.remove(self.contour, keep)
        self.points, self.thetas = self.points[: keep + 1 if keep else 0], self.thetas[:keep]


def _two_targets(rng, resolution, recipe, contour_length, segment, margin):
    """Canvas and the two target contours, complex (2, contour_length + 1).

    The contours grow in turn; a contour that cannot grow, or whose end comes too close to the
    other contour, takes back its last 1.._RETRACT segments (``_BACKTRACKS`` steps per attempt).
    """
    sd = recipe.seed_distance
    for _ in range(_TRIES):
        canvas = _Canvas(resolution, recipe, segment, margin)
        y, x = rng.uniform(2 * sd, resolution - 1 - 2 * sd, size=2)
        tails = [x + 1j * y, x + 1j * y + sd * np.exp(1j * rng.uniform(-np.pi, np.pi))]
        for k in (0, 1):
            canvas.add_tip(tails[k], k)
        contours = [_Contour(canvas, 0), _Contour(canvas, 1)]
        for _ in range(_BACKTRACKS):
            counts = [len(c.thetas) for c in contours]
            if min(counts) < contour_length:
                k = int(np.argmin(counts))
                grown = (
                    contours[k].extend(rng, recipe.continuity)
                    if counts[k]
                    else contours[k].start(rng, np.full(_SEGMENT_TRIES, tails[k]))
                )
                if grown:
                    continue
            else:
                ends = [c.points[-1] for c in contours]
                near = [
                    canvas.distance_to(ends[k], 1 - k) < canvas.tip_clearance
                    or min(abs(ends[k] - tails[1 - k]), abs(ends[0] - ends[1])) < canvas.marker_gap
                    for k in (0, 1)
                ]
                if not any(near):
                    for k in (0, 1):
                        canvas.add_tip(ends[k], k)
                    return canvas, np.array([c.points for c in contours])
                k = near.index(True)
            contours[k].retract(int(rng.integers(1, _RETRACT + 1)))
    raise RuntimeError(
        f"no two target contours fit at resolution {resolution} after {_TRIES} attempts"
    )


def _render(resolution: int, a, b, radius: float, value: float, image: np.ndarray):
    """Draws antialiased capsules a -> b (n,) complex of ``radius`` into ``image`` (r, r)."""
    if len(a) == 0:
        return
    window = int(np.ceil(np.max(np.abs(b - a)) + 2 * radius + 3))
    low = np.minimum(a.real, b.real), np.minimum(a.imag, b.imag)
    x0, y0 = (np.floor(v - radius - 1).astype(int) for v in low)
    offsets = np.arange(window)
    ys = y0[:, None, None] + offsets[None, :, None]  # (n, w, 1)
    xs = x0[:, None, None] + offsets[None, None, :]  # (n, 1, w)
    ys, xs = np.broadcast_arrays(ys, xs)
    dist = _point_segment_distance(xs + 1j * ys, a[:, None, None], b[:, None, None])
    ink = value * np.clip(radius + 0.5 - dist, 0.0, 1.0)
    keep = (ink > 0) & (ys >= 0) & (ys < resolution) & (xs >= 0) & (xs < resolution)
    np.maximum.at(image, (ys[keep], xs[keep]), ink[keep])


def _yx(z: np.ndarray) -> np.ndarray:
    """Complex points (...) as (..., 2) float (y, x)."""
    return np.stack([z.imag, z.real], axis=-1)


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
    canvas, targets = _two_targets(rng, resolution, recipe, contour_length, segment, margin)
    length = contour_length // 3
    distractors = []
    for i in range(recipe.distractor_base // length):
        for _ in range(_DISTRACTOR_TRIES):
            contour = _Contour(canvas, 2 + i)
            y, x = rng.uniform(recipe.padding, resolution - 1 - recipe.padding, (2, _SEEDS))
            if contour.start(rng, x + 1j * y) and all(
                contour.extend(rng, recipe.continuity) for _ in range(length - 1)
            ):
                distractors.append(_yx(np.array(contour.points)))
                break
            canvas.remove(2 + i)
    label = index % 2
    origin = int(rng.integers(2))
    terminal = origin if label else 1 - origin
    markers = np.array([targets[origin][0], targets[terminal][-1]])
    ink = np.zeros((resolution, resolution))
    _render(resolution, canvas.a, canvas.b, recipe.thickness / 2, recipe.contrast, ink)
    _render(resolution, markers, markers, recipe.marker_radius, 1.0, ink)
    image = np.round(ink * (255 / max(recipe.contrast, 1.0))).astype(np.uint8)
    return PathfinderSample(image, label, _yx(markers), _yx(targets), distractors)


def pathfinder_example(
    resolution: int, contour_length: int, index: int, seed: int
) -> tuple[np.ndarray, int]:
    """Example ``index`` of ``seed``: (image (resolution, resolution) uint8, label)."""
    sample = pathfinder_sample(resolution, contour_length, index, seed)
    return sample.image, sample.label


def _release_rows(manual_dir: str, resolution: int, contour_length: int) -> list[tuple[Path, int]]:
    """(image path, label) of every listed, non-empty image of the LRA release, in order."""
    root = Path(manual_dir).expanduser() / f"pathfinder{resolution}" / RELEASE_DIRS[contour_length]
    files = sorted((root / "metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise FileNotFoundError(
            f"no Pathfinder metadata at {root / 'metadata' / '<k>.npy'}; extract LRA's "
            "lra_release.gz (https://storage.googleapis.com/long-range-arena/lra_release.gz) and "
            "pass the folder holding pathfinder32/ ... pathfinder256/ as manual_dir"
        )
    rows, skipped = [], 0
    for file in files:
        for line in file.read_text().splitlines():
            fields = line.split()
            if not fields:
                continue
            image = root / fields[0] / fields[1]
            if image.is_file() and image.stat().st_size > 0:
                rows.append((image, int(fields[3])))
            else:
                skipped += 1
    if skipped:
        logging.warning("skipped %d missing or empty Pathfinder images under %s", skipped, root)
    return rows


def _read_png(path: Path, resolution: int) -> np.ndarray:
    """A release image as (resolution, resolution) uint8 grey levels."""
    from PIL import Image  # only needed to read the release

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    if pixels.shape != (resolution, resolution):
        raise ValueError(f"{path} is {pixels.shape}, expected ({resolution}, {resolution})")
    return pixels


@dataclasses.dataclass(eq=False)
class PathfinderConfig(tfds.core.BuilderConfig):
    """A builder config per (resolution, contour length, size, seed) or per release."""

    resolution: int = 32
    contour_length: int = 14
    size: str = "full"
    seed: int = 0
    manual_dir: str | None = None


class Pathfinder(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of Pathfinder; examples are ``image`` (r, r) uint8 and ``label``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path = tfds.core.Path(__file__)  # see digits.py: tfds cannot derive it here
    disable_shuffling = True  # example i of a generated split is pathfinder_example(i + offset)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(r, r), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                    ),
                    "label": tfds.features.ClassLabel(num_classes=2),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/drewlinsley/pathfinder",
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        if config.manual_dir is not None:
            rows = _release_rows(config.manual_dir, config.resolution, config.contour_length)
            ends = [int(len(rows) * 0.8), int(len(rows) * 0.9), len(rows)]
            starts = [0, *ends[:2]]
            return {
                split: self._release_examples(rows[start:end])
                for split, start, end in zip(SPLITS, starts, ends, strict=True)
            }
        counts = SIZES[config.size]
        starts = np.cumsum((0, *counts[:-1]))
        return {
            split: self._generate_examples(int(start), count)
            for split, start, count in zip(SPLITS, starts, counts, strict=True)
        }

    def _generate_examples(self, start: int, count: int):
        """Yields (i, example) for generated indices start .. start + count - 1."""
        config = self.builder_config
        for i in range(count):
            image, label = pathfinder_example(
                config.resolution, config.contour_length, start + i, config.seed
            )
            yield i, {"image": image, "label": label}

    def _release_examples(self, rows: list[tuple[Path, int]]):
        """Yields (i, example) for release rows of (image path, label)."""
        for i, (path, label) in enumerate(rows):
            yield i, {"image": _read_png(path, self.builder_config.resolution), "label": label}


class PixelSequence:
    """A random-access view of a Pathfinder split: ``inputs`` (r * r, 1) float32 in [-1, 1]."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        example = self.source[i]
        pixels = example["image"].reshape(-1, 1).astype(np.float32)
        return {"inputs": pixels * (2 / 255) - 1, "label": int(example["label"])}


@register_dataset("pathfinder")
def pathfinder(
    *,
    data_dir: str | None = None,
    resolution: Literal[32, 64, 128, 256] = 32,
    contour_length: Literal[6, 9, 14] = 14,
    size: Literal["full", "small", "tiny"] = "full",
    seed: int = 0,
    manual_dir: str | None = None,
) -> Dataset:
    """Pathfinder (Path-X at resolution 128), generated from ``seed`` or read from LRA's release.

    Args:
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        resolution: image side r; the sequence length is r * r.
        contour_length: segments per target contour; 14 is LRA's task (``curv_contour_length_14``),
            6 and 9 its easier ``curv_baseline`` and ``curv_contour_length_9``.
        size: generated split sizes: ``full`` (LRA: 160,000 / 20,000 / 20,000), ``small``
            (2,000 / 200 / 200) or ``tiny`` (64 / 32 / 32, for tests).
        seed: generation seed.
        manual_dir: folder holding LRA's ``pathfinder<r>/`` folders; when given, the release is
            read instead of generating (``size`` and ``seed`` then do not apply).
    """
    if manual_dir is None:
        name = f"r{resolution}_len{contour_length}_{size}_seed_{seed}"
    else:
        name = f"r{resolution}_len{contour_length}_release"
    config = PathfinderConfig(
        name=name,
        resolution=resolution,
        contour_length=contour_length,
        size=size,
        seed=seed,
        manual_dir=manual_dir,
    )
    with _quiet_tfds():
        builder = Pathfinder(
            data_dir=resolve_data_dir(data_dir), config=config, file_format="array_record"
        )
        builder.download_and_prepare()
    spec = DatasetSpec(
        name="pathfinder",
        seq_len=resolution * resolution,
        num_classes=2,
        d_input=1,
        vocab_size=None,
        splits=SPLITS,
    )
    sources = builder.as_data_source()
    return Dataset(spec=spec, sources={s: PixelSequence(sources[s]) for s in SPLITS})
