"""Images read pixel by pixel (row-major) from downloaded releases: CIFAR-10 and MNIST.

Registered datasets; examples are ``inputs`` (l, d) float32 and ``label`` (no ``length``):

- ``cifar_gray`` (LRA Image): CIFAR-10 in grayscale, l=1024, d=1. The 256 gray levels are those of
  LRA, ``tf.image.rgb_to_grayscale`` of the uint8 image (weights 0.2989, 0.5870, 0.1140, scaled
  back by 255.5 and truncated), then normalized as in S4: (level / 255 - 122.6 / 255) / (61 / 255).
- ``scifar``: CIFAR-10 in colour, l=1024, d=3 (RGB), each channel normalized as in S4.
- ``smnist``: MNIST, l=784, d=1, pixels / 255.
- ``psmnist``: ``smnist`` with every sequence reordered by one fixed permutation of the 784
  pixels, ``np.random.RandomState(permutation_seed).permutation(784)``.

Splits: validation is the last 10% of the stored training set (TFDS shuffles examples by key
when it writes them, so this is a fixed random 10%): CIFAR-10 45,000/5,000/10,000 and MNIST
54,000/6,000/10,000 for train/validation/test.

The releases are read from ``manual_dir``; with ``download=True`` missing files are first
downloaded there (the options of ``ssm.data.manual.ReleaseOptions``).
"""

import functools
import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ssm.config import NonNegativeInt
from ssm.data.build import Builder
from ssm.data.manual import Release, ReleaseOptions, RemoteFile, archive_release, release_dataset
from ssm.data.registry import Dataset, DatasetSpec, register_dataset

STORED_SPLITS = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale
GRAY_MEAN, GRAY_STD = 122.6 / 255.0, 61.0 / 255.0
RGB_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
RGB_STD = np.array([0.247, 0.243, 0.261], dtype=np.float32)

CIFAR10 = archive_release(
    "cifar10",
    "CIFAR-10 (python version)",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    contents=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
)
CIFAR10_CLASSES = [
    *("airplane", "automobile", "bird", "cat", "deer"),
    *("dog", "frog", "horse", "ship", "truck"),
]
_CIFAR10_BATCHES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST = Release(
    name="mnist",
    title="MNIST (idx files)",
    url="https://ossci-datasets.s3.amazonaws.com/mnist/<file>.gz",
    layouts=(
        tuple(f"{name}.gz" for pair in _MNIST_FILES.values() for name in pair),
        tuple(name for pair in _MNIST_FILES.values() for name in pair),
    ),
    hint="put them there, gzipped or not",
    files=tuple(
        RemoteFile(f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}.gz")
        for pair in _MNIST_FILES.values()
        for name in pair
    ),
)
PSMNIST_SEED = 92916  # the permutation seed other psMNIST works use (noted in state-spaces)


def tf_grayscale(image: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint8 gray levels, as ``tf.image.rgb_to_grayscale``."""
    gray = (image.astype(np.float32) * np.float32(1 / 255)) @ GRAY_WEIGHTS
    return (gray * np.float32(255.5)).astype(np.uint8)


def _image_features(shape: tuple[int, ...], classes: list[str]) -> dict:
    image = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
    return {"image": image, "label": tfds.features.ClassLabel(names=classes)}


class Cifar10Release(Builder):
    """CIFAR-10 from the python release (archive or folder); ``image`` (32, 32, 3) uint8."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {CIFAR10.url} into manual_dir."

    DESCRIPTION = "CIFAR-10 images as uint8 RGB arrays."
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

    def _features(self):
        return _image_features((32, 32, 3), CIFAR10_CLASSES)

    def _split_generators(self, dl_manager):
        batches = _cifar10_batches(Path(dl_manager.manual_dir))
        return {
            split: self._generate_examples([batches[name] for name in names])
            for split, names in _CIFAR10_BATCHES.items()
        }

    def _generate_examples(self, batches: list[dict]):
        """Yields (file name, example); batches hold ``data`` (n, 3072) and ``labels`` (n,)."""
        for batch in batches:
            images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            for name, image, label in zip(
                batch[b"filenames"], images, batch[b"labels"], strict=True
            ):
                yield name.decode(), {"image": image, "label": int(label)}


def _cifar10_batches(root: Path) -> dict[str, dict]:
    """The pickled batches of the python release, by file name (e.g. ``data_batch_1``)."""
    names = {name for group in _CIFAR10_BATCHES.values() for name in group}
    batches = {}
    if CIFAR10.layout(root) == 1:
        for name in names:
            with open(root / "cifar-10-batches-py" / name, "rb") as f:
                batches[name] = pickle.load(f, encoding="bytes")
        return batches
    with tarfile.open(root / "cifar-10-python.tar.gz", "r:gz") as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name in names:
                batches[name] = pickle.load(tar.extractfile(member), encoding="bytes")
    missing = sorted(names - set(batches))
    if missing:
        raise ValueError(f"{root / 'cifar-10-python.tar.gz'} lacks {', '.join(missing)}")
    return batches


class MnistRelease(Builder):
    """MNIST from its four idx files (gzipped or not); ``image`` (28, 28) uint8."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {MNIST.url} into manual_dir."

    DESCRIPTION = "MNIST handwritten digits as uint8 arrays."
    HOMEPAGE = "https://yann.lecun.com/exdb/mnist/"

    def _features(self):
        return _image_features((28, 28), [str(d) for d in range(10)])

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        suffix = ".gz" if MNIST.layout(root) == 0 else ""
        return {
            split: self._generate_examples(root / f"{images}{suffix}", root / f"{labels}{suffix}")
            for split, (images, labels) in _MNIST_FILES.items()
        }

    def _generate_examples(self, images_path: Path, labels_path: Path):
        """Yields (index, example) of an images file and its labels file."""
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise ValueError(f"{images_path} and {labels_path} are not matching MNIST idx files")
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image, "label": int(label)}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) of unsigned bytes -> array of its dimensions, uint8."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    zeros, dtype, ndim = data[0:2], data[2], data[3]
    if zeros != b"\0\0" or dtype != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _gray_example(example: dict) -> dict:
    levels = tf_grayscale(example["image"]).reshape(1024, 1)
    inputs = (levels / np.float32(255) - GRAY_MEAN) / GRAY_STD
    return {"inputs": inputs.astype(np.float32), "label": example["label"]}


def _colour_example(example: dict) -> dict:
    inputs = (example["image"].reshape(1024, 3) / np.float32(255) - RGB_MEAN) / RGB_STD
    return {"inputs": inputs.astype(np.float32), "label": example["label"]}


def _mnist_example(example: dict, permutation: np.ndarray | None) -> dict:
    pixels = example["image"].reshape(784)
    if permutation is not None:
        pixels = pixels[permutation]
    inputs = (pixels / np.float32(255)).astype(np.float32).reshape(784, 1)
    return {"inputs": inputs, "label": example["label"]}


@register_dataset("cifar_gray", shared=ReleaseOptions)
def cifar_gray(**options) -> Dataset:
    """LRA Image: grayscale CIFAR-10 pixel by pixel, (1024, 1).

    ``manual_dir`` holds ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/`` (default
    ``<data_dir>/manual/cifar10``); ``download`` fetches the archive (170 MB).
    """
    spec = DatasetSpec("cifar_gray", seq_len=1024, num_classes=10, d_input=1)
    return _pixels(Cifar10Release, CIFAR10, spec, _gray_example, options)


@register_dataset("scifar", shared=ReleaseOptions)
def scifar(**options) -> Dataset:
    """Sequential CIFAR-10 in colour pixel by pixel, (1024, 3); the files as for ``cifar_gray``."""
    spec = DatasetSpec("scifar", seq_len=1024, num_classes=10, d_input=3)
    return _pixels(Cifar10Release, CIFAR10, spec, _colour_example, options)


@register_dataset("smnist", shared=ReleaseOptions)
def smnist(**options) -> Dataset:
    """Sequential MNIST pixel by pixel, (784, 1).

    ``manual_dir`` holds the four MNIST idx files, gzipped or not (default
    ``<data_dir>/manual/mnist``); ``download`` fetches them gzipped (11 MB).
    """
    fn = functools.partial(_mnist_example, permutation=None)
    spec = DatasetSpec("smnist", seq_len=784, num_classes=10, d_input=1)
    return _pixels(MnistRelease, MNIST, spec, fn, options)


@register_dataset("psmnist", shared=ReleaseOptions)
def psmnist(*, permutation_seed: NonNegativeInt = PSMNIST_SEED, **options) -> Dataset:
    """Permuted sequential MNIST: pixels in one fixed random order, (784, 1); the files as for
    ``smnist``.

    Args:
        permutation_seed: seed of ``np.random.RandomState(seed).permutation(784)``.
    """
    permutation = np.random.RandomState(permutation_seed).permutation(784)
    fn = functools.partial(_mnist_example, permutation=permutation)
    spec = DatasetSpec("psmnist", seq_len=784, num_classes=10, d_input=1)
    return _pixels(MnistRelease, MNIST, spec, fn, options)


def _pixels(builder_cls, release, spec, fn, options: dict) -> Dataset:
    """``spec``, read through ``fn`` from the release's train[:90%] / train[90%:] / test."""
    return release_dataset(
        builder_cls, release, spec, fn, ReleaseOptions(**options), stored=STORED_SPLITS
    )
