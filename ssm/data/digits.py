"""Sequential digits: scikit-learn's 1,797 8x8 handwritten digits read pixel by pixel.

Each image is a sequence of l=64 pixels with d_input=1 channel scaled to [0, 1]; 10 classes. The
data ships with scikit-learn, so the dataset builds offline. The train/validation/test split
(1,437/180/180) is stratified by class and fixed by ``split_seed``; each seed is its own TFDS
builder config, so different seeds live side by side on disk.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ssm.config import NonNegativeInt
from ssm.data.build import Builder, builder_dataset, prepare_builder
from ssm.data.registry import SPLITS, Dataset, DatasetSpec, register_dataset

SEQ_LEN = 64
NUM_CLASSES = 10
HELD_OUT = 180  # examples in each of validation and test


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
    """A builder config per split seed (named ``seed_<n>``)."""

    split_seed: int = 0


class SequentialDigits(Builder):
    """TFDS builder of the pixel-sequence digits; examples are ``inputs`` (64, 1), ``label``."""

    HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"
    SUPERVISED_KEYS = ("inputs", "label")

    def _features(self):
        return {
            "inputs": tfds.features.Tensor(shape=(SEQ_LEN, 1), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }

    def _split_generators(self, dl_manager):
        # scikit-learn is only needed to build, so it is imported here.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        seed = self.builder_config.split_seed
        index = np.arange(len(digits.target))
        rest, test = train_test_split(
            index, test_size=HELD_OUT, stratify=digits.target, random_state=seed
        )
        train, validation = train_test_split(
            rest, test_size=HELD_OUT, stratify=digits.target[rest], random_state=seed
        )
        return {
            name: self._generate_examples(digits.images, digits.target, rows)
            for name, rows in zip(SPLITS, (train, validation, test), strict=True)
        }

    def _generate_examples(self, images: np.ndarray, targets: np.ndarray, rows: np.ndarray):
        """Yields (sklearn row, example); images (n, 8, 8) with values 0..16."""
        for row in rows:
            inputs = (images[row].reshape(SEQ_LEN, 1) / 16.0).astype(np.float32)
            yield int(row), {"inputs": inputs, "label": int(targets[row])}


@register_dataset("digits")
def digits(*, data_dir: str | None = None, split_seed: NonNegativeInt = 0) -> Dataset:
    """The sequential digits, built under ``data_dir`` on first use and read from array_record.

    Args:
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        split_seed: seed of the stratified train/validation/test split.
    """
    config = DigitsConfig(name=f"seed_{split_seed}", split_seed=split_seed)
    builder = prepare_builder(SequentialDigits, data_dir=data_dir, config=config)
    spec = DatasetSpec("digits", seq_len=SEQ_LEN, num_classes=NUM_CLASSES, d_input=1)
    return builder_dataset(builder, spec)
