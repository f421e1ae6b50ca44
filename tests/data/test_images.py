"""CIFAR-10 (LRA Image, sCIFAR) and MNIST (sMNIST, psMNIST) built from tiny fake releases."""

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssm.data import Loader, get_dataset
from ssm.data.images import GRAY_MEAN, GRAY_STD, RGB_MEAN, RGB_STD, read_idx
from ssm.data.manual import MissingDataError

SPLITS = ("train", "validation", "test")
RNG = np.random.default_rng(0)
# CIFAR-10: 20 training images (4 per data_batch_i) and 5 test images, (n, 32, 32, 3) uint8.
CIFAR_TRAIN = RNG.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
CIFAR_TEST = RNG.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
# Pure red, green, blue and white pixels, whose LRA gray levels are known.
CIFAR_TEST[0, 0, :4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]
CIFAR_TRAIN_LABELS = np.arange(20) % 10
CIFAR_TEST_LABELS = np.array([3, 1, 4, 1, 5])
# MNIST: 20 training and 5 test digits, (n, 28, 28) uint8.
MNIST_TRAIN = RNG.integers(0, 256, (20, 28, 28), dtype=np.uint8)
MNIST_TEST = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
MNIST_TRAIN_LABELS = (np.arange(20) * 7) % 10
MNIST_TEST_LABELS = np.array([9, 2, 6, 5, 3])
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/{name}"
MNIST_NAMES = (
    *("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    *("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)

# Builds and reads in a fresh interpreter where `import tensorflow` fails as if not installed.
NO_TENSORFLOW_BODY = """
from ssm.data import get_dataset

for name in ("cifar_gray", "psmnist"):
    source = get_dataset(name, data_dir=sys.argv[1]).source("test")
    result[name] = [source[i]["inputs"].tolist() for i in range(len(source))]
"""

# Downloads MNIST with TFDS's real download manager from a local HTTP server (sys.argv[2]) in a
# fresh interpreter where `import tensorflow` fails, and reads it.
NO_TENSORFLOW_DOWNLOAD_BODY = """
import dataclasses, functools, http.server, os, threading
from ssm.data import get_dataset, images
from ssm.data.manual import RemoteFile

os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{server.server_address[1]}"
files = tuple(RemoteFile(f"{base}/{file.name}") for file in images.MNIST.files)
images.MNIST = dataclasses.replace(images.MNIST, files=files)
source = get_dataset("smnist", data_dir=sys.argv[1], download=True).source("test")
result["smnist"] = [source[i]["inputs"].tolist() for i in range(len(source))]
server.shutdown()
"""


def write_cifar10(root, *, archive: bool) -> None:
    """The CIFAR-10 python release: pickled dicts with ``data`` (n, 3072) in CHW order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i + 1}": slice(4 * i, 4 * i + 4) for i in range(5)}
    for name, rows in [*batches.items(), ("test_batch", None)]:
        images, labels = (
            (CIFAR_TEST, CIFAR_TEST_LABELS)
            if rows is None
            else (CIFAR_TRAIN[rows], CIFAR_TRAIN_LABELS[rows])
        )
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(y) for y in labels],
            b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"num_cases_per_batch": 4}))
    if archive:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes: magic 0x0000 0x08 ndim, big-endian dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root, *, gzipped: bool) -> None:
    root.mkdir(parents=True)
    files = {
        "train-images-idx3-ubyte": MNIST_TRAIN,
        "train-labels-idx1-ubyte": MNIST_TRAIN_LABELS,
        "t10k-images-idx3-ubyte": MNIST_TEST,
        "t10k-labels-idx1-ubyte": MNIST_TEST_LABELS,
    }
    for name, array in files.items():
        data = idx_bytes(array)
        (root / (name + ".gz" if gzipped else name)).write_bytes(
            gzip.compress(data) if gzipped else data
        )


def lra_gray(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) -> (n, 1024) levels: tf.image.rgb_to_grayscale on uint8, in float64."""
    gray = images / 255 @ np.array([0.2989, 0.5870, 0.1140])
    return np.floor(gray * 255.5).astype(np.uint8).reshape(len(images), 1024)


def read_all(dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    source = dataset.source(split)
    examples = [source[i] for i in range(len(source))]
    return np.stack([e["inputs"] for e in examples]), np.array([e["label"] for e in examples])


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    rows = rows.reshape(len(rows), -1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def cifar_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root / "raw", archive=True)
    return str(root / "tfds"), str(root / "raw")


@pytest.fixture(scope="module")
def mnist_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root / "raw", gzipped=True)
    return str(root / "tfds"), str(root / "raw")


def test_lra_image_is_tf_grayscale_levels_normalized_as_s4(cifar_dirs):
    data_dir, manual_dir = cifar_dirs
    dataset = get_dataset("cifar_gray", data_dir=data_dir, manual_dir=manual_dir)
    spec = dataset.spec
    assert (spec.name, spec.seq_len, spec.d_input, spec.num_classes) == ("cifar_gray", 1024, 1, 10)
    inputs, labels = read_all(dataset, "test")
    assert inputs.shape == (5, 1024, 1) and inputs.dtype == np.float32
    scaled = (inputs[..., 0] * GRAY_STD + GRAY_MEAN) * 255
    levels = np.rint(scaled)
    np.testing.assert_allclose(scaled, levels, atol=1e-3)
    got = sorted((tuple(row), int(y)) for row, y in zip(levels, labels, strict=True))
    expected = zip(lra_gray(CIFAR_TEST), CIFAR_TEST_LABELS, strict=True)
    assert got == sorted((tuple(row), int(y)) for row, y in expected)
    first = levels[np.flatnonzero((levels[:, :4] == [76, 149, 29, 255]).all(axis=1))]
    assert len(first) == 1  # red, green, blue, white -> TF's truncated levels, not rounded ones


def test_scifar_is_rgb_pixels_row_major_normalized_per_channel(cifar_dirs):
    data_dir, manual_dir = cifar_dirs
    dataset = get_dataset("scifar", data_dir=data_dir, manual_dir=manual_dir)
    assert (dataset.spec.seq_len, dataset.spec.d_input) == (1024, 3)
    inputs, labels = read_all(dataset, "test")
    assert inputs.shape == (5, 1024, 3) and inputs.dtype == np.float32
    pixels = np.rint((inputs * RGB_STD + RGB_MEAN) * 255)
    np.testing.assert_array_equal(sorted_rows(pixels), sorted_rows(CIFAR_TEST.reshape(5, 1024, 3)))
    for x, label in zip(pixels, labels, strict=True):
        match = [
            i for i, image in enumerate(CIFAR_TEST) if np.array_equal(image.reshape(1024, 3), x)
        ]
        assert CIFAR_TEST_LABELS[match[0]] == label


def test_cifar_validation_is_held_out_from_train_and_both_cover_it(cifar_dirs):
    dataset = get_dataset("scifar", data_dir=cifar_dirs[0], manual_dir=cifar_dirs[1])
    train, validation = (read_all(dataset, s)[0] for s in ("train", "validation"))
    assert (len(train), len(validation)) == (18, 2)
    pixels = np.rint((np.concatenate([train, validation]) * RGB_STD + RGB_MEAN) * 255)
    np.testing.assert_array_equal(sorted_rows(pixels), sorted_rows(CIFAR_TRAIN))


def test_cifar_from_extracted_folder_equals_archive_build(tmp_path, cifar_dirs):
    write_cifar10(tmp_path / "raw", archive=False)
    folder = get_dataset(
        "cifar_gray", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw")
    )
    archive = get_dataset("cifar_gray", data_dir=cifar_dirs[0], manual_dir=cifar_dirs[1])
    for split in SPLITS:
        a, b = read_all(folder, split)[0], read_all(archive, split)[0]
        np.testing.assert_array_equal(sorted_rows(a), sorted_rows(b))


def test_smnist_is_pixels_over_255_from_gzipped_idx_files(mnist_dirs):
    dataset = get_dataset("smnist", data_dir=mnist_dirs[0], manual_dir=mnist_dirs[1])
    spec = dataset.spec
    assert (spec.name, spec.seq_len, spec.d_input, spec.num_classes) == ("smnist", 784, 1, 10)
    inputs, labels = read_all(dataset, "test")
    assert inputs.shape == (5, 784, 1) and inputs.dtype == np.float32
    for x, label in zip(inputs, labels, strict=True):
        match = [i for i, d in enumerate(MNIST_TEST) if np.allclose(d.reshape(784, 1) / 255, x)]
        assert len(match) == 1 and MNIST_TEST_LABELS[match[0]] == label
    train, validation = (read_all(dataset, s)[0] for s in ("train", "validation"))
    assert (len(train), len(validation)) == (18, 2)
    both = np.rint(np.concatenate([train, validation]) * 255)
    np.testing.assert_array_equal(sorted_rows(both), sorted_rows(MNIST_TRAIN))


def test_psmnist_applies_one_fixed_seeded_permutation_to_every_digit(mnist_dirs):
    smnist = get_dataset("smnist", data_dir=mnist_dirs[0], manual_dir=mnist_dirs[1])
    psmnist = get_dataset("psmnist", data_dir=mnist_dirs[0], manual_dir=mnist_dirs[1])
    permutation = np.random.RandomState(92916).permutation(784)
    assert np.array_equal(np.sort(permutation), np.arange(784))
    assert not np.array_equal(permutation, np.arange(784))
    for split in SPLITS:
        plain, permuted = read_all(smnist, split)[0], read_all(psmnist, split)[0]
        np.testing.assert_array_equal(permuted, plain[:, permutation])
    other = get_dataset(
        "psmnist", data_dir=mnist_dirs[0], manual_dir=mnist_dirs[1], permutation_seed=1
    )
    assert not np.array_equal(read_all(other, "test")[0], read_all(psmnist, "test")[0])


def test_mnist_uncompressed_idx_files_build_the_same_digits(tmp_path, mnist_dirs):
    write_mnist(tmp_path / "raw", gzipped=False)
    plain = get_dataset("smnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"))
    gzipped = get_dataset("smnist", data_dir=mnist_dirs[0], manual_dir=mnist_dirs[1])
    for split in SPLITS:
        np.testing.assert_array_equal(read_all(plain, split)[0], read_all(gzipped, split)[0])


def test_read_idx_rejects_a_file_that_is_not_idx_bytes(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">i", 1) + b"\0\0\0\0")  # float32 idx
    with pytest.raises(ValueError, match="is not an idx file of unsigned bytes"):
        read_idx(path)


def test_image_datasets_batch_through_the_loader(mnist_dirs):
    dataset = get_dataset("psmnist", data_dir=mnist_dirs[0], manual_dir=mnist_dirs[1])
    batch = next(Loader(dataset.source("train"), 4, seed=0).batches(0))
    assert batch["inputs"].shape == (4, 784, 1) and batch["mask"].all()
    assert batch["label"].shape == (4,)


@pytest.mark.parametrize(
    "name, release, files, url",
    [
        (
            "cifar_gray",
            "cifar10",
            ["cifar-10-python.tar.gz", "cifar-10-batches-py/test_batch"],
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        ),
        (
            "scifar",
            "cifar10",
            ["cifar-10-python.tar.gz", "cifar-10-batches-py/data_batch_5"],
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        ),
        (
            "smnist",
            "mnist",
            ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"],
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        (
            "psmnist",
            "mnist",
            ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte"],
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
    ],
)
def test_missing_release_error_names_files_manual_dir_and_url(
    tmp_path, fake_download, name, release, files, url
):
    calls = fake_download({})
    with pytest.raises(FileNotFoundError) as error:
        get_dataset(name, data_dir=str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, MissingDataError) and "\n" not in message
    assert f"manual_dir {tmp_path / 'manual' / release};" in message
    assert all(file in message for file in files) and url in message
    assert "set dataset.download=true" in message and calls == []  # offline by default


def cifar_release(root) -> dict[str, Path]:
    """URL -> local file of a fake CIFAR-10 release."""
    write_cifar10(root, archive=True)
    return {CIFAR_URL: root / "cifar-10-python.tar.gz"}


def mnist_release(root) -> dict[str, Path]:
    """URL -> local file of a fake MNIST release (four gzipped idx files)."""
    write_mnist(root, gzipped=True)
    return {MNIST_URL.format(name=path.name): path for path in root.iterdir()}


@pytest.mark.parametrize(
    "name, write, fixture, release, urls, stored",
    [
        (
            "cifar_gray",
            cifar_release,
            "cifar_dirs",
            "cifar10",
            [CIFAR_URL],
            ["cifar-10-python.tar.gz"],
        ),
        (
            "psmnist",
            mnist_release,
            "mnist_dirs",
            "mnist",
            [MNIST_URL.format(name=f"{name}.gz") for name in MNIST_NAMES],
            sorted(f"{name}.gz" for name in MNIST_NAMES),
        ),
    ],
)
def test_download_fetches_the_missing_release_into_manual_dir_once(
    tmp_path, request, fake_download, name, write, fixture, release, urls, stored
):
    calls = fake_download(write(tmp_path / "server"))
    data_dir, manual_dir = str(tmp_path / "tfds"), tmp_path / "manual"
    downloaded = get_dataset(name, data_dir=data_dir, manual_dir=str(manual_dir), download=True)
    assert calls == [urls]
    assert sorted(p.name for p in manual_dir.iterdir()) == stored
    assert not list((tmp_path / "tfds" / "downloads").glob(f"{release}*"))  # staging removed
    dirs = request.getfixturevalue(fixture)
    by_hand = get_dataset(name, data_dir=dirs[0], manual_dir=dirs[1])
    for split in SPLITS:
        (inputs, labels), expected = read_all(downloaded, split), read_all(by_hand, split)
        np.testing.assert_array_equal(inputs, expected[0])
        np.testing.assert_array_equal(labels, expected[1])
    for path in manual_dir.iterdir():  # prepared: no download even without the files
        path.unlink()
    get_dataset(name, data_dir=data_dir, manual_dir=str(manual_dir), download=True)
    assert len(calls) == 1


def test_download_is_skipped_when_manual_dir_has_the_files(tmp_path, fake_download):
    calls = fake_download({})
    write_mnist(tmp_path / "raw", gzipped=False)
    dataset = get_dataset(
        "smnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"), download=True
    )
    assert calls == [] and len(dataset.source("test")) == 5


def test_failed_download_is_a_missing_data_error_saying_what_to_do(tmp_path, fake_download):
    fake_download({})  # offline
    with pytest.raises(MissingDataError) as error:
        get_dataset("scifar", data_dir=str(tmp_path), download=True)
    message = str(error.value)
    assert "\n" not in message and f"downloading {CIFAR_URL} failed (ConnectionError" in message
    assert (
        f"cifar-10-batches-py/test_batch] in manual_dir {tmp_path / 'manual' / 'cifar10'}"
        in message
    )


def test_image_builders_round_trip_with_tensorflow_unimportable(tmp_path, run_without_tensorflow):
    write_cifar10(tmp_path / "manual" / "cifar10", archive=True)
    write_mnist(tmp_path / "manual" / "mnist", gzipped=True)
    report = run_without_tensorflow(NO_TENSORFLOW_BODY, str(tmp_path))
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    gray = np.array(report["cifar_gray"])[..., 0] * GRAY_STD + GRAY_MEAN
    np.testing.assert_array_equal(
        sorted_rows(np.rint(gray * 255)), sorted_rows(lra_gray(CIFAR_TEST))
    )
    permutation = np.random.RandomState(92916).permutation(784)
    expected = MNIST_TEST.reshape(5, 784)[:, permutation]
    got = np.rint(np.array(report["psmnist"])[..., 0] * 255)
    np.testing.assert_array_equal(sorted_rows(got), sorted_rows(expected))
    written = {p.name.split("-")[0] for p in tmp_path.rglob("*.array_record-*")}
    assert written == {"cifar10_release", "mnist_release"}


def test_download_with_tfds_download_manager_works_without_tensorflow(
    tmp_path, run_without_tensorflow
):
    mnist_release(tmp_path / "server")
    report = run_without_tensorflow(
        NO_TENSORFLOW_DOWNLOAD_BODY, str(tmp_path / "tfds"), str(tmp_path / "server")
    )
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    got = np.rint(np.array(report["smnist"])[..., 0] * 255)
    np.testing.assert_array_equal(sorted_rows(got), sorted_rows(MNIST_TEST.reshape(5, 784)))
    stored = sorted(p.name for p in (tmp_path / "tfds" / "manual" / "mnist").iterdir())
    assert stored == sorted(f"{name}.gz" for name in MNIST_NAMES)
