"""The sequential-digits TFDS dataset and the dataset registry."""

import collections
import dataclasses
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ssm.config import ConfigError
from ssm.data import dataset_options_class, get_dataset, resolve_data_dir

SPLITS = ("train", "validation", "test")
SIZES = {"train": 1437, "validation": 180, "test": 180}

# Builds and reads the digits in a fresh interpreter where `import tensorflow` fails.
NO_TENSORFLOW_BODY = """
from ssm.data import get_dataset

dataset = get_dataset("digits", data_dir=sys.argv[1])
example = dataset.source("train")[0]
result["sizes"] = {split: len(dataset.source(split)) for split in dataset.spec.splits}
result["shape"] = list(example["inputs"].shape)
result["dtype"] = str(example["inputs"].dtype)
result["label"] = int(example["label"])
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits(data_dir):
    return get_dataset("digits", data_dir=data_dir)


@pytest.fixture(scope="module")
def sklearn_digits():
    return load_digits()


def read_split(dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a split: inputs (n, 64, 1), labels (n,)."""
    source = dataset.source(split)
    examples = [source[i] for i in range(len(source))]
    return np.stack([e["inputs"] for e in examples]), np.array([e["label"] for e in examples])


def sorted_rows(images: np.ndarray) -> np.ndarray:
    """Images (n, ...) flattened to rows (n, 64) in lexicographic order (a multiset key)."""
    rows = images.reshape(len(images), -1)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_builds_array_record_and_reads_it_with_tensorflow_unimportable(
    tmp_path, run_without_tensorflow
):
    report = run_without_tensorflow(NO_TENSORFLOW_BODY, str(tmp_path))
    assert report["sizes"] == SIZES
    assert report["shape"] == [64, 1] and report["dtype"] == "float32"
    assert 0 <= report["label"] < 10
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    written = {p.name.split("-")[1] for p in tmp_path.rglob("*.array_record-*")}
    assert written == {f"{split}.array_record" for split in SPLITS}


def test_digits_spec_and_examples_are_pixel_sequences_in_unit_range(digits):
    spec = digits.spec
    assert (spec.name, spec.seq_len, spec.num_classes) == ("digits", 64, 10)
    assert (spec.d_input, spec.vocab_size, spec.splits) == (1, None, SPLITS)
    example = digits.source("train")[0]
    assert example["inputs"].shape == (64, 1) and example["inputs"].dtype == np.float32
    assert 0.0 <= example["inputs"].min() and example["inputs"].max() <= 1.0
    assert isinstance(example["label"], int | np.integer) and 0 <= example["label"] < 10
    assert "length" not in example


def test_digits_splits_are_disjoint_and_cover_all_1797_images(digits, sklearn_digits):
    images = {split: read_split(digits, split)[0] for split in SPLITS}
    assert {split: len(x) for split, x in images.items()} == SIZES
    everything = np.concatenate(list(images.values()))
    expected = (sklearn_digits.images / 16.0).astype(np.float32)
    np.testing.assert_array_equal(sorted_rows(everything), sorted_rows(expected))


def test_digits_labels_match_sklearn_targets_of_the_same_image(digits, sklearn_digits):
    targets_of = collections.defaultdict(set)
    for image, target in zip(sklearn_digits.images, sklearn_digits.target, strict=True):
        targets_of[(image / 16.0).astype(np.float32).tobytes()].add(int(target))
    for split in SPLITS:
        inputs, labels = read_split(digits, split)
        for x, label in zip(inputs, labels, strict=True):
            assert int(label) in targets_of[x.tobytes()]


def test_digits_held_out_splits_are_stratified_by_class(digits):
    for split in ("validation", "test"):
        counts = np.bincount(read_split(digits, split)[1], minlength=10)
        assert counts.min() >= 17 and counts.max() <= 19, (split, counts)


def test_digits_same_split_seed_rebuilds_identical_examples(digits, tmp_path):
    rebuilt = get_dataset("digits", data_dir=str(tmp_path), split_seed=0)
    for split in SPLITS:
        for a, b in zip(read_split(digits, split), read_split(rebuilt, split), strict=True):
            np.testing.assert_array_equal(a, b)


def test_digits_different_split_seed_gives_a_different_split_beside_the_first(digits, data_dir):
    other = get_dataset("digits", data_dir=data_dir, split_seed=1)
    test_0, test_1 = (sorted_rows(read_split(d, "test")[0]) for d in (digits, other))
    assert not np.array_equal(test_0, test_1)
    configs = sorted(os.listdir(os.path.join(data_dir, "sequential_digits")))
    assert configs == ["seed_0", "seed_1"]


def test_digits_unknown_split_is_a_value_error_naming_valid_splits(digits):
    with pytest.raises(ValueError, match="unknown split 'val'.*valid: train, validation, test"):
        digits.source("val")


def test_unknown_dataset_is_a_value_error_naming_valid_datasets():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid: .*digits"):
        get_dataset("mnist")


def test_digits_options_class_mirrors_factory_keywords_and_rejects_unknown_keys(tmp_path):
    fields = {f.name: f.default for f in dataclasses.fields(dataset_options_class("digits"))}
    assert fields == {"data_dir": None, "split_seed": 0, "size": "full"}
    with pytest.raises(ConfigError, match="unknown key dataset.seed; valid keys .*split_seed"):
        get_dataset("digits", data_dir=str(tmp_path), seed=1)
    with pytest.raises(ConfigError, match="dataset.split_seed"):
        get_dataset("digits", data_dir=str(tmp_path), split_seed="one")


def test_data_dir_defaults_to_env_variable_then_user_cache(monkeypatch):
    assert resolve_data_dir("/some/dir") == "/some/dir"
    monkeypatch.setenv("SSM_DATA_DIR", "/from/env")
    assert resolve_data_dir(None) == "/from/env"
    monkeypatch.delenv("SSM_DATA_DIR")
    assert resolve_data_dir(None) == os.path.expanduser("~/.cache/ssm_jax/tfds")
