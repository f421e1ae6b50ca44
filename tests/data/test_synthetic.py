"""Synthetic tasks generated on the fly: determinism, targets checked by independent evaluators,
lengths and sizes, option errors, the loader round trip and the dataset configs."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from ssm.config import ConfigError
from ssm.data import DATASETS, Loader, dataset_options_class, get_dataset

TASKS = ("copying", "selective_copying", "induction_heads", "mqar", "adding")
SPLITS = ("train", "validation", "test")
SMALL = dict(num_train=40, num_val=20, num_test=20)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def examples(dataset, split: str, n: int | None = None) -> list[dict]:
    source = dataset.source(split)
    return [source[i] for i in range(len(source) if n is None else n)]


def as_bytes(example: dict) -> bytes:
    return b"".join(np.asarray(example[k]).tobytes() for k in sorted(example))


def copied_tokens(inputs: np.ndarray, data_vocab: int, num_tokens: int) -> np.ndarray:
    """Independent reading of a (selective) copying input: its data tokens in order."""
    context = inputs[:-num_tokens]
    return context[context < data_vocab]


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_same_seed_gives_byte_identical_examples_and_another_seed_others(task):
    first, again = (get_dataset(task, seed=3, **SMALL) for _ in range(2))
    other = get_dataset(task, seed=4, **SMALL)
    for split in SPLITS:
        a, b, c = (examples(d, split, 8) for d in (first, again, other))
        assert [as_bytes(e) for e in a] == [as_bytes(e) for e in b]
        assert all(as_bytes(x) != as_bytes(y) for x, y in zip(a, c, strict=True))
    train, test = (examples(first, split, 8) for split in ("train", "test"))
    assert all(as_bytes(x) != as_bytes(y) for x, y in zip(train, test, strict=True))


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_example_depends_only_on_seed_split_and_index(task):
    dataset = get_dataset(task, seed=1, **SMALL)
    source = dataset.source("validation")
    forward = [as_bytes(source[i]) for i in range(10)]
    backward = [as_bytes(source[i]) for i in reversed(range(10))][::-1]
    assert forward == backward
    bigger = get_dataset(task, seed=1, num_train=100, num_val=500, num_test=3)
    assert [as_bytes(bigger.source("validation")[i]) for i in range(10)] == forward
    assert as_bytes(source[-1]) == as_bytes(source[len(source) - 1])


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_splits_have_the_requested_sizes_and_reject_indices_past_the_end(task):
    dataset = get_dataset(task, num_train=7, num_val=5, num_test=3)
    assert dataset.spec.splits == SPLITS
    assert [len(dataset.source(s)) for s in SPLITS] == [7, 5, 3]
    with pytest.raises(IndexError, match="index 5 is out of range for 5 examples"):
        dataset.source("validation")[5]


def test_selective_copying_labels_are_the_scattered_data_tokens_in_order():
    dataset = get_dataset("selective_copying", **SMALL)
    spec = dataset.spec
    assert (spec.seq_len, spec.num_classes, spec.vocab_size, spec.d_input) == (256, 16, 18, None)
    first_positions = set()
    for example in examples(dataset, "train"):
        inputs, label, label_mask = example["inputs"], example["label"], example["label_mask"]
        assert inputs.shape == label.shape == label_mask.shape == (256,)
        assert inputs.dtype == label.dtype == np.int32 and label_mask.dtype == bool
        np.testing.assert_array_equal(np.flatnonzero(label_mask), np.arange(240, 256))
        np.testing.assert_array_equal(inputs[240:], 17)  # markers
        assert set(np.unique(inputs[:240])) <= set(range(17))  # data tokens and blanks only
        tokens = copied_tokens(inputs, data_vocab=16, num_tokens=16)
        assert len(tokens) == 16
        np.testing.assert_array_equal(label[label_mask], tokens)
        first_positions.add(int(np.flatnonzero(inputs < 16)[0]))
    assert len(first_positions) > 10  # scattered, not a fixed prefix


@settings(max_examples=15, deadline=None)
@given(
    num_tokens=st.integers(1, 12),
    extra=st.integers(0, 40),
    data_vocab=st.integers(1, 30),
    seed=st.integers(0, 2**31),
)
def test_selective_copying_evaluator_agrees_for_any_length_and_vocabulary(
    num_tokens, extra, data_vocab, seed
):
    seq_len = 2 * num_tokens + extra
    dataset = get_dataset(
        "selective_copying",
        seq_len=seq_len,
        num_tokens=num_tokens,
        data_vocab=data_vocab,
        seed=seed,
        **SMALL,
    )
    assert (dataset.spec.seq_len, dataset.spec.num_classes) == (seq_len, data_vocab)
    for example in examples(dataset, "test", 3):
        assert example["inputs"].shape == (seq_len,)
        assert example["label_mask"].sum() == num_tokens
        tokens = copied_tokens(example["inputs"], data_vocab, num_tokens)
        np.testing.assert_array_equal(example["label"][example["label_mask"]], tokens)


def test_copying_reproduces_the_prefix_after_the_delay():
    dataset = get_dataset("copying", seq_len=40, num_tokens=6, data_vocab=5, **SMALL)
    assert (dataset.spec.num_classes, dataset.spec.vocab_size) == (5, 7)
    for example in examples(dataset, "train"):
        inputs, label, label_mask = example["inputs"], example["label"], example["label_mask"]
        assert (inputs[:6] < 5).all()
        np.testing.assert_array_equal(inputs[6:34], 5)  # blanks during the delay
        np.testing.assert_array_equal(inputs[34:], 6)  # markers
        np.testing.assert_array_equal(np.flatnonzero(label_mask), np.arange(34, 40))
        np.testing.assert_array_equal(label[label_mask], inputs[:6])


def induction_target(inputs: np.ndarray, trigger: int) -> int:
    """Independent answer: the token right after the previous occurrence of the final trigger."""
    assert inputs[-1] == trigger
    previous = np.flatnonzero(inputs[:-1] == trigger)
    assert len(previous) == 1
    return int(inputs[previous[0] + 1])


def test_induction_heads_label_is_the_token_after_the_previous_trigger():
    dataset = get_dataset("induction_heads", **SMALL)
    assert (dataset.spec.num_classes, dataset.spec.vocab_size) == (16, 17)
    for example in examples(dataset, "train"):
        inputs, label_mask = example["inputs"], example["label_mask"]
        assert inputs.shape == (256,)
        np.testing.assert_array_equal(np.flatnonzero(label_mask), [255])
        assert example["label"][255] == induction_target(inputs, trigger=16)


def test_induction_heads_evaluates_lazily_at_length_two_to_the_twenty():
    dataset = get_dataset("induction_heads", eval_seq_len=2**20, num_test=1_000_000)
    assert dataset.spec.seq_len == 2**20
    assert dataset.source("train")[0]["inputs"].shape == (256,)
    example = dataset.source("test")[999_999]
    assert example["inputs"].shape == example["label"].shape == (2**20,)
    assert example["label"][-1] == induction_target(example["inputs"], trigger=16)
    assert example["label_mask"].sum() == 1


def test_mqar_label_at_each_query_is_the_value_paired_with_that_key():
    dataset = get_dataset("mqar", seq_len=64, num_kv_pairs=8, vocab_size=40, **SMALL)
    assert (dataset.spec.num_classes, dataset.spec.vocab_size) == (40, 40)
    for example in examples(dataset, "train"):
        inputs, label, label_mask = example["inputs"], example["label"], example["label_mask"]
        keys, values = inputs[0:16:2], inputs[1:16:2]
        assert len(set(keys.tolist())) == 8 and (keys < 20).all() and (values >= 20).all()
        pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
        queries = np.flatnonzero(label_mask)
        assert len(queries) == 8 and (queries >= 16).all() and (queries % 2 == 0).all()
        assert sorted(inputs[queries].tolist()) == sorted(pairs)  # every key asked once
        for position in queries:
            assert label[position] == pairs[int(inputs[position])]


def test_mqar_queries_come_soon_after_the_pairs_under_the_power_law():
    dataset = get_dataset("mqar", seq_len=512, num_kv_pairs=4, **SMALL)
    gaps = np.concatenate(
        [(np.flatnonzero(e["label_mask"]) - 8) // 2 for e in examples(dataset, "train")]
    )
    assert np.median(gaps) < 252 / 4  # uniform gaps over 252 slots would have median ~126


def test_adding_label_is_the_bin_of_the_sum_of_the_two_marked_values():
    dataset = get_dataset("adding", seq_len=50, num_bins=20, num_train=200)
    spec = dataset.spec
    assert (spec.d_input, spec.vocab_size, spec.num_classes, spec.seq_len) == (2, None, 20, 50)
    edges = np.linspace(0.0, 2.0, 21)
    labels = []
    for example in examples(dataset, "train"):
        inputs = example["inputs"]
        assert inputs.shape == (50, 2) and inputs.dtype == np.float32
        assert "label_mask" not in example
        values, markers = inputs[:, 0], inputs[:, 1]
        assert ((values >= 0) & (values < 1)).all()
        marked = np.flatnonzero(markers)
        assert set(np.unique(markers)) == {0.0, 1.0} and len(marked) == 2
        assert marked[0] < 25 <= marked[1]
        total = values[marked].astype(np.float64).sum()
        assert example["label"] == np.digitize(total, edges) - 1
        labels.append(example["label"])
    assert len(set(labels)) > 10  # the sums spread over the bins


@pytest.mark.parametrize(
    "task, options, message",
    [
        ("selective_copying", dict(seq_len=20, num_tokens=16), "seq_len=20 must be at least 2 "),
        ("copying", dict(num_tokens=0), "num_tokens=0 is not valid; valid: an integer >= 1"),
        (
            "induction_heads",
            dict(eval_seq_len=2),
            "eval_seq_len=2 is not valid; valid: an integer >= 3",
        ),
        ("mqar", dict(seq_len=32, num_kv_pairs=16), "seq_len=32 must be at least 4 "),
        ("mqar", dict(vocab_size=20), "vocab_size=20 must be at least 2 \\* num_kv_pairs=32"),
        ("mqar", dict(power_a=0.0), "power_a=0.0 is not valid; valid: a number in \\(0, 1\\]"),
        ("adding", dict(num_bins=1), "num_bins=1 is not valid; valid: an integer >= 2"),
        ("adding", dict(num_val=0), "num_val=0 is not valid; valid: an integer >= 1"),
        ("copying", dict(seed=-1), "seed=-1 is not valid; valid: an integer >= 0"),
    ],
)
def test_synthetic_invalid_options_fail_with_one_line_saying_what_is_valid(task, options, message):
    with pytest.raises(ValueError, match=message) as error:
        get_dataset(task, **options)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=message):  # called as a library, without a config
        DATASETS.get(task)(**options)


def test_synthetic_unknown_or_mistyped_option_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown key dataset.vocab; valid keys of dataset: "):
        get_dataset("selective_copying", vocab=4)
    with pytest.raises(ConfigError, match="dataset.seq_len='long' must be an integer"):
        get_dataset("mqar", seq_len="long")


def test_loader_batches_selective_copying_with_per_position_labels_and_masks():
    dataset = get_dataset("selective_copying", **SMALL)
    loader = Loader(dataset.source("train"), 8, seed=0)
    batches = list(loader.batches(0))
    assert len(batches) == 5
    batch = batches[0]
    assert batch["inputs"].shape == (8, 256) and batch["inputs"].dtype == np.int32
    assert batch["label"].shape == (8, 256) and batch["label"].dtype == np.int32
    assert batch["mask"].shape == (8, 256) and batch["mask"].all()
    assert batch["label_mask"].shape == (8, 256) and batch["label_mask"].dtype == bool
    np.testing.assert_array_equal(batch["label_mask"].sum(axis=1), 16)
    for inputs, label, label_mask in zip(
        batch["inputs"], batch["label"], batch["label_mask"], strict=True
    ):
        np.testing.assert_array_equal(label[label_mask], copied_tokens(inputs, 16, 16))
    seen = np.concatenate([b["inputs"] for b in batches])
    expected = np.stack([e["inputs"] for e in examples(dataset, "train")])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, expected))  # each example once


def test_loader_batches_adding_as_real_valued_sequence_classification():
    dataset = get_dataset("adding", **SMALL)
    batch = next(Loader(dataset.source("test"), 16, seed=0, shuffle=False).batches(0))
    assert batch["inputs"].shape == (16, 200, 2) and batch["inputs"].dtype == np.float32
    assert batch["label"].shape == (16,) and "label_mask" not in batch
    np.testing.assert_array_equal(
        batch["label"], [e["label"] for e in examples(dataset, "test", 16)]
    )


@pytest.mark.parametrize("task", TASKS)
def test_dataset_config_file_lists_every_option_with_the_factory_default(task):
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "dataset" / f"{task}.yaml"))
    assert config.pop("name") == task
    defaults = {f.name: f.default for f in dataclasses.fields(dataset_options_class(task))}
    assert config == defaults
