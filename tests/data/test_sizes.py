"""The generic ``size`` option: datasets without their own keep the first examples of a split."""

import numpy as np
import pytest

from ssm.config import ConfigError
from ssm.data import get_dataset
from ssm.data.registry import DATASETS, dataset_options_class


def test_every_dataset_has_a_size_option_defaulting_to_full():
    for name in DATASETS.names():
        fields = dataset_options_class(name).__dataclass_fields__
        assert fields["size"].default == "full", name


@pytest.mark.parametrize(("size", "train", "other"), [("small", 2000, 200), ("tiny", 64, 16)])
def test_small_and_tiny_keep_the_first_examples_of_each_split(size, train, other):
    options = dict(seq_len=64, num_tokens=8, num_train=3000, num_val=500, num_test=10)
    full = get_dataset("selective_copying", **options)
    cut = get_dataset("selective_copying", size=size, **options)
    expected = {"train": train, "validation": other, "test": min(other, 10)}
    for split, count in expected.items():
        source = cut.source(split)
        assert len(source) == count
        for i in (0, count - 1, -1):
            for key, value in full.source(split)[i % count].items():
                np.testing.assert_array_equal(source[i][key], value)
        with pytest.raises(IndexError, match=f"out of range for {count} examples"):
            source[count]


def test_full_leaves_the_dataset_unchanged():
    full = get_dataset("adding", num_train=3000)
    assert len(full.source("train")) == 3000
    assert get_dataset("adding", num_train=3000, size="full").spec == full.spec


def test_unknown_size_is_a_config_error_naming_the_valid_sizes():
    with pytest.raises(ConfigError, match="dataset.size.*'full', 'small', 'tiny'"):
        get_dataset("copying", size="medium")
