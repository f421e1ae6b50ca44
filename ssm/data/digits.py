"""Sequential digits: scikit-learn's 1,797 8x8 handwritten digits read pixel by pixel.

Each image is a sequence of l=64 pixels with d_input=1 channel scaled to [0, 1]; 10 classes. The
data ships with scikit-learn, so the dataset builds offline. The train/validation/test split
(1,437/180/180) is stratified by class and fixed by ``split_seed``; each seed is its own TFDS
builder config, so different seeds live side by side on disk.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ssm.data.build import prepare_builder
from ssm.data.registry import Dataset, DatasetSpec, register_dataset, resolve_data_dir

SEQ_LEN = 64
NUM_CLASSES = 10
HELD_OUT = 180  # examples in each of validation and test
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
    """A builder config per split seed (named ``seed_<n>``)."""

    split_seed: int = 0


class SequentialDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of the pixel-sequence digits; examples are ``inputs`` (64, 1), ``label``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Given, not derived: tfds 4.9.10 derives it through the undeclared `importlib_resources`
    # package (tensorflow/datasets#11212), which fails for builders outside tfds.
    code_path = tfds.core.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "inputs": tfds.features.Tensor(shape=(SEQ_LEN, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("inputs", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

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
def digits(*, data_dir: str | None = None, split_seed: int = 0) -> Dataset:
    """The sequential digits, built under ``data_dir`` on first use and read from array_record.

    Args:
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        split_seed: seed of the stratified train/validation/test split.
    """
    config = DigitsConfig(name=f"seed_{split_seed}", split_seed=split_seed)
    builder = prepare_builder(SequentialDigits, data_dir=resolve_data_dir(data_dir), config=config)
    spec = DatasetSpec(
        name="digits",
        seq_len=SEQ_LEN,
        num_classes=NUM_CLASSES,
        d_input=1,
        vocab_size=None,
        splits=SPLITS,
    )
    return Dataset(spec=spec, sources=builder.as_data_source())
