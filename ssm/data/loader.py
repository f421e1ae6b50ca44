"""Grain batch loading with padding, optional length bucketing and exact resume.

The order of an epoch is a function of ``(seed, epoch)`` alone, so a run resumed at
``(epoch, step)`` sees exactly the batches an uninterrupted run would have seen; with bucketing,
batch ``k`` of epoch ``e`` is still a pure function of ``(seed, e, k)``.
"""

import functools
from collections.abc import Iterator, Sequence

import grain
import numpy as np

_READ_OPTIONS = grain.ReadOptions(num_threads=8, prefetch_buffer_size=16)


def _time_axis(example: dict) -> int:
    """Axis of positions: 1 for pairs (``length`` of shape (2,)), else 0."""
    return 1 if np.ndim(example.get("length", 0)) == 1 else 0


def _valid_length(example: dict) -> int:
    """Number of valid positions (the longer member's for pairs)."""
    inputs = np.asarray(example["inputs"])
    return int(np.max(example.get("length", inputs.shape[_time_axis(example)])))


def _with_mask(example: dict) -> dict[str, np.ndarray]:
    """Example -> ``inputs`` (l, d) or (l,), ``mask`` (l,) bool, ``label`` () or (l,) int32,
    and ``label_mask`` (l,) bool for per-position targets scored at some positions only.

    Pairs (``length`` of shape (2,)) have inputs (2, l[, d]) and mask (2, l).
    """
    inputs = np.asarray(example["inputs"])
    axis = _time_axis(example)
    positions = np.arange(inputs.shape[axis])
    length = np.asarray(example.get("length", inputs.shape[axis]))
    mask = positions < length[..., None] if axis else positions < length
    batch = {"inputs": inputs, "mask": mask, "label": np.asarray(example["label"], np.int32)}
    if "label_mask" in example:
        batch["label_mask"] = np.asarray(example["label_mask"], bool)
    return batch


def _fit(x: np.ndarray, length: int, axis: int) -> np.ndarray:
    """``x`` cut or zero-padded to ``length`` along ``axis``."""
    if x.shape[axis] >= length:
        return x.take(np.arange(length), axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return np.pad(x, widths)


def _collate(examples: Sequence[dict], length: int | None = None) -> dict[str, np.ndarray]:
    """Stacks examples from ``_with_mask``, padded to ``length`` (None: the longest inputs).

    Only padding is ever cut: an example with more valid positions than ``length`` is an error.
    """
    axis = 1 if examples[0]["mask"].ndim == 2 else 0
    if length is None:
        length = max(e["inputs"].shape[axis] for e in examples)
    longest = max(int(e["mask"].sum(axis=axis).max()) for e in examples)
    if longest > length:
        raise ValueError(f"an example has {longest} valid positions, more than length {length}")
    timed = {"inputs", "mask", "label_mask"}
    if examples[0]["label"].ndim:
        timed.add("label")
    return {
        key: np.stack([_fit(e[key], length, axis) if key in timed else e[key] for e in examples])
        for key in examples[0]
    }


class Loader:
    """Batches of a random-access source, shuffled per epoch, padded, optionally bucketed.

    Each batch is a dict of numpy arrays: ``inputs`` (b, l, d) float32 or (b, l) int32,
    ``mask`` (b, l) bool (True at valid positions), ``label`` (b,) int32. ``l`` is ``pad_to``,
    else the batch's bucket boundary, else the longest ``inputs`` in the batch (so a source of
    equal-length examples keeps its length). Padding beyond an example's ``length`` may be cut.

    Args:
        source: random-access examples (``len()``, ``__getitem__(i) -> dict``).
        batch_size: b, examples per batch.
        seed: shuffle seed; epoch ``e`` is shuffled with a seed derived from ``(seed, e)``.
        shuffle: False keeps the source order (evaluation).
        drop_remainder: False keeps the last, smaller batch (per bucket with bucketing).
        pad_to: every batch has exactly this length.
        bucket_boundaries: increasing lengths; an example of ``length`` n goes to the bucket of
            the first boundary >= n, batches are drawn from one bucket and padded to its
            boundary. Reads every example's length once, when the loader is made.
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = True,
        pad_to: int | None = None,
        bucket_boundaries: Sequence[int] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if pad_to is not None and pad_to < 1:
            raise ValueError(f"pad_to must be positive, got {pad_to}")
        if pad_to is not None and bucket_boundaries is not None:
            raise ValueError("give pad_to or bucket_boundaries, not both")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.pad_to = pad_to
        self.boundaries = None if bucket_boundaries is None else tuple(bucket_boundaries)
        if self.boundaries is not None:
            self._buckets = self._assign_buckets()
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"no batch of {batch_size} from {len(source)} examples "
                f"(drop_remainder={drop_remainder})"
            )

    def _assign_buckets(self) -> np.ndarray:
        """Bucket index of every example: (n,) int."""
        boundaries = np.asarray(self.boundaries)
        if len(boundaries) == 0 or boundaries[0] < 1 or np.any(np.diff(boundaries) <= 0):
            raise ValueError(
                f"bucket_boundaries must be increasing positive lengths, got {self.boundaries}"
            )
        lengths = np.array([_valid_length(self.source[i]) for i in range(len(self.source))])
        too_long = np.flatnonzero(lengths > boundaries[-1])
        if len(too_long):
            i = too_long[0]
            raise ValueError(
                f"example {i} has length {lengths[i]}, longer than the last bucket boundary "
                f"{boundaries[-1]} ({len(too_long)} such examples)"
            )
        return np.searchsorted(boundaries, lengths, side="left")

    @property
    def steps_per_epoch(self) -> int:
        """Number of batches in one epoch."""
        if self.boundaries is None:
            counts = [len(self.source)]
        else:
            counts = np.bincount(self._buckets, minlength=len(self.boundaries))
        rest = 0 if self.drop_remainder else 1
        return sum(n // self.batch_size + rest * int(n % self.batch_size > 0) for n in counts)

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))

    def _bucketed_batches(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(boundary, example indices) of every batch of ``epoch``, in order."""
        rng = self._rng(epoch)
        n = len(self.source)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches = []
        for bucket, boundary in enumerate(self.boundaries):
            members = order[self._buckets[order] == bucket]
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_remainder:
                    batches.append((boundary, chunk))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _read_batch(self, batch: tuple[int, np.ndarray]) -> dict[str, np.ndarray]:
        boundary, indices = batch
        return _collate([_with_mask(self.source[int(i)]) for i in indices], boundary)

    def _epoch(self, epoch: int) -> grain.MapDataset:
        if self.boundaries is not None:
            return grain.MapDataset.source(self._bucketed_batches(epoch)).map(self._read_batch)
        ds = grain.MapDataset.source(self.source)
        if self.shuffle:
            epoch_seed = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
            ds = ds.shuffle(seed=int(epoch_seed))
        collate = functools.partial(_collate, length=self.pad_to)
        return ds.map(_with_mask).batch(
            self.batch_size, drop_remainder=self.drop_remainder, batch_fn=collate
        )

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches of ``epoch`` from step ``start`` on (``start`` resumes mid-epoch)."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"start must be in [0, {self.steps_per_epoch}], got {start}")
        yield from self._epoch(epoch)[start:].to_iter_dataset(_READ_OPTIONS)
