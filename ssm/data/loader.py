"""Grain batch loading with padding and exact resume.

The order of an epoch is a function of ``(seed, epoch)`` alone, so a run resumed at
``(epoch, step)`` sees exactly the batches an uninterrupted run would have seen.
"""

import functools
from collections.abc import Iterator, Sequence

import grain
import numpy as np

_READ_OPTIONS = grain.ReadOptions(num_threads=8, prefetch_buffer_size=16)


def _time_axis(example: dict) -> int:
    """Axis of positions: 1 for pairs (``length`` of shape (2,)), else 0."""
    return 1 if np.ndim(example.get("length", 0)) == 1 else 0


def _with_mask(example: dict) -> dict[str, np.ndarray]:
    """Example -> ``inputs`` (l, d) or (l,), ``mask`` (l,) bool, ``label`` () or (l,) int32,
    ``label_mask`` (l,) bool for per-position targets scored at some positions only, and
    ``segment_ids`` (l,) int32 for packed rows.

    Pairs (``length`` of shape (2,)) have inputs (2, l[, d]) and mask (2, l).
    """
    inputs = np.asarray(example["inputs"])
    axis = _time_axis(example)
    positions = np.arange(inputs.shape[axis])
    length = np.asarray(example.get("length", inputs.shape[axis]))
    mask = positions < length[..., None] if axis else positions < length
    batch = {"inputs": inputs, "mask": mask}
    if "label" in example:  # language-model corpora have none: targets come from the inputs
        batch["label"] = np.asarray(example["label"], np.int32)
    if "label_mask" in example:
        batch["label_mask"] = np.asarray(example["label_mask"], bool)
    if "segment_ids" in example:
        batch["segment_ids"] = np.asarray(example["segment_ids"], np.int32)
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
    timed = {"inputs", "mask", "label_mask", "segment_ids"}
    if "label" in examples[0] and examples[0]["label"].ndim:
        timed.add("label")
    return {
        key: np.stack([_fit(e[key], length, axis) if key in timed else e[key] for e in examples])
        for key in examples[0]
    }


class Loader:
    """Batches of a random-access source, shuffled per epoch and padded.

    Each batch is a dict of numpy arrays: ``inputs`` (b, l, d) float32 or (b, l) int32,
    ``mask`` (b, l) bool (True at valid positions), ``label`` (b,) int32, and ``segment_ids``
    (b, l) int32 for a source of packed rows. ``l`` is ``pad_to``,
    else the longest ``inputs`` in the batch (so a source of equal-length examples keeps its
    length). Padding beyond an example's ``length`` may be cut.

    Args:
        source: random-access examples (``len()``, ``__getitem__(i) -> dict``).
        batch_size: b, examples per batch.
        seed: shuffle seed; epoch ``e`` is shuffled with a seed derived from ``(seed, e)``.
        shuffle: False keeps the source order (evaluation).
        drop_remainder: False keeps the last, smaller batch.
        pad_to: every batch has exactly this length.
        shard: (index, count): this host loads rows ``index::count`` of every batch
            (``batch_size // count`` of them), for multi-host data parallelism.
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
        shard: tuple[int, int] = (0, 1),
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if pad_to is not None and pad_to < 1:
            raise ValueError(f"pad_to must be positive, got {pad_to}")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.pad_to = pad_to
        self.shard = shard
        if batch_size % shard[1]:
            raise ValueError(f"batch_size {batch_size} does not split over {shard[1]} hosts")
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"no batch of {batch_size} from {len(source)} examples "
                f"(drop_remainder={drop_remainder})"
            )

    @property
    def steps_per_epoch(self) -> int:
        """Number of batches in one epoch."""
        full, rest = divmod(len(self.source), self.batch_size)
        return full + int(rest > 0 and not self.drop_remainder)

    def _epoch(self, epoch: int) -> grain.MapDataset:
        ds = grain.MapDataset.source(self.source)
        if self.shuffle:
            epoch_seed = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
            ds = ds.shuffle(seed=int(epoch_seed))
        collate = functools.partial(_collate, length=self.pad_to)
        index, count = self.shard
        if count > 1:  # host ``index`` takes every count-th example of each global batch
            ds = ds[: self.steps_per_epoch * self.batch_size][index::count]
        return ds.map(_with_mask).batch(
            self.batch_size // count, drop_remainder=self.drop_remainder, batch_fn=collate
        )

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches of ``epoch`` from step ``start`` on (``start`` resumes mid-epoch)."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"start must be in [0, {self.steps_per_epoch}], got {start}")
        yield from self._epoch(epoch)[start:].to_iter_dataset(_READ_OPTIONS)
