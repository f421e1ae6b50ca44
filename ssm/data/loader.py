"""Grain batch loading with exact resume.

The order of an epoch is a function of ``(seed, epoch)`` alone, so a run resumed at
``(epoch, step)`` sees exactly the batches an uninterrupted run would have seen.
"""

from collections.abc import Iterator

import grain
import numpy as np

_READ_OPTIONS = grain.ReadOptions(num_threads=8, prefetch_buffer_size=16)


def _with_mask(example: dict) -> dict[str, np.ndarray]:
    """Example -> ``inputs`` (l, d) or (l,), ``mask`` (l,) bool, ``label`` () or (l,) int32,
    and ``label_mask`` (l,) bool for per-position targets scored at some positions only."""
    inputs = np.asarray(example["inputs"])
    positions = np.arange(inputs.shape[0])
    mask = positions < example.get("length", inputs.shape[0])
    batch = {"inputs": inputs, "mask": mask, "label": np.asarray(example["label"], np.int32)}
    if "label_mask" in example:
        batch["label_mask"] = np.asarray(example["label_mask"], bool)
    return batch


class Loader:
    """Batches of a random-access source, shuffled per epoch.

    Each batch is a dict of numpy arrays: ``inputs`` (b, l, d) float32 or (b, l) int32,
    ``mask`` (b, l) bool (True at valid positions), ``label`` (b,) int32.

    Args:
        source: random-access examples (``len()``, ``__getitem__(i) -> dict``).
        batch_size: b, examples per batch.
        seed: shuffle seed; epoch ``e`` is shuffled with a seed derived from ``(seed, e)``.
        shuffle: False keeps the source order (evaluation).
        drop_remainder: False keeps the last, smaller batch (evaluation).
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
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
        return ds.map(_with_mask).batch(self.batch_size, drop_remainder=self.drop_remainder)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batches of ``epoch`` from step ``start`` on (``start`` resumes mid-epoch)."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"start must be in [0, {self.steps_per_epoch}], got {start}")
        yield from self._epoch(epoch)[start:].to_iter_dataset(_READ_OPTIONS)
