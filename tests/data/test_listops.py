"""Generated LRA ListOps: labels by an independent evaluator, LRA's bounds, determinism, TFDS."""

import statistics

import numpy as np
import pytest

from ssm.config import ConfigError
from ssm.data import get_dataset
from ssm.data.listops import sample_trees

SPLITS = ("train", "validation", "test")
TINY = {"train": 64, "validation": 16, "test": 16}
OPERATORS = {11: "MIN", 12: "MAX", 13: "MED", 14: "SM"}

# Builds and reads ListOps in a fresh interpreter where `import tensorflow` fails.
NO_TENSORFLOW_BODY = """
from ssm.data import get_dataset

dataset = get_dataset("listops", data_dir=sys.argv[1], size="tiny")
example = dataset.source("test")[3]
result["sizes"] = {split: len(dataset.source(split)) for split in dataset.spec.splits}
result["tokens"] = example["inputs"][: example["length"]].tolist()
result["label"] = int(example["label"])
"""


def evaluate(tokens) -> tuple[int, int]:
    """Parses a token stream back into a tree; returns (value, depth). Asserts it is well formed.

    Digits are 1..10, operators 11..14 open a node, 15 closes the innermost open node.
    """
    open_nodes: list[tuple[str, list[int]]] = []
    done: list[int] = []
    depth = 0
    for token in tokens:
        token = int(token)
        if 1 <= token <= 10:
            (open_nodes[-1][1] if open_nodes else done).append(token - 1)
            depth = max(depth, len(open_nodes) + 1)
        elif token in OPERATORS:
            open_nodes.append((OPERATORS[token], []))
            depth = max(depth, len(open_nodes))
        else:
            assert token == 15, f"unexpected token {token}"
            name, args = open_nodes.pop()
            assert 2 <= len(args) <= 10, f"{name} with {len(args)} arguments"
            value = {
                "MIN": min(args),
                "MAX": max(args),
                "MED": int(statistics.median(args)),
                "SM": sum(args) % 10,
            }[name]
            (open_nodes[-1][1] if open_nodes else done).append(value)
    assert not open_nodes and len(done) == 1, "not a single closed tree"
    return done[0], depth


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def tiny(data_dir):
    return get_dataset("listops", data_dir=data_dir, size="tiny")


def read(dataset, split: str) -> list[dict]:
    source = dataset.source(split)
    return [source[i] for i in range(len(source))]


def test_listops_builds_array_record_and_reads_it_with_tensorflow_unimportable(
    tmp_path, run_without_tensorflow
):
    report = run_without_tensorflow(NO_TENSORFLOW_BODY, str(tmp_path))
    assert report["sizes"] == TINY
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    assert evaluate(report["tokens"])[0] == report["label"]
    written = {p.name.split("-")[1] for p in tmp_path.rglob("*.array_record-*")}
    assert written == {f"{split}.array_record" for split in SPLITS}


def test_listops_labels_match_an_independent_evaluator_of_the_token_stream(tiny):
    for split in SPLITS:
        for example in read(tiny, split):
            value, depth = evaluate(example["inputs"][: example["length"]])
            assert value == example["label"]
            assert depth <= 10


def test_listops_sampled_trees_of_every_size_evaluate_to_their_labels():
    tokens, labels = sample_trees(np.random.default_rng(7), 300)
    lengths = [len(t) for t in tokens]
    assert min(lengths) == 1 and max(lengths) > 100  # lone digits and deep trees alike
    assert [evaluate(t)[0] for t in tokens] == labels.tolist()
    assert len(set(labels.tolist())) == 10


def test_listops_lengths_are_strictly_between_500_and_2000_and_padding_is_zero(tiny):
    assert {split: len(tiny.source(split)) for split in SPLITS} == TINY
    for split in SPLITS:
        for example in read(tiny, split):
            assert 500 < example["length"] < 2000
            assert example["inputs"].shape == (2048,) and example["inputs"].dtype == np.int32
            assert np.all(example["inputs"][: example["length"]] > 0)
            assert np.all(example["inputs"][example["length"] :] == 0)


def test_listops_examples_are_distinct_across_splits(tiny):
    keys = [e["inputs"].tobytes() for split in SPLITS for e in read(tiny, split)]
    assert len(set(keys)) == len(keys) == sum(TINY.values())


def test_listops_same_seed_rebuilds_byte_identical_examples_and_another_seed_differs(
    tiny, tmp_path
):
    again = get_dataset("listops", data_dir=str(tmp_path), size="tiny", seed=0)
    other = get_dataset("listops", data_dir=str(tmp_path), size="tiny", seed=1)
    for split in SPLITS:
        ours, rebuilt, others = (read(d, split) for d in (tiny, again, other))
        assert [e["inputs"].tobytes() for e in ours] == [e["inputs"].tobytes() for e in rebuilt]
        assert [e["label"] for e in ours] == [e["label"] for e in rebuilt]
        assert not {e["inputs"].tobytes() for e in ours} & {e["inputs"].tobytes() for e in others}


def test_listops_spec_is_tokens_of_length_2048_with_16_symbols_and_10_classes(tiny):
    spec = tiny.spec
    assert (spec.name, spec.seq_len, spec.num_classes) == ("listops", 2048, 10)
    assert (spec.d_input, spec.vocab_size, spec.splits) == (None, 16, SPLITS)


def test_listops_unknown_size_is_a_config_error_naming_the_sizes(tmp_path):
    with pytest.raises(ConfigError, match="dataset.size='huge'.*'full', 'small', 'tiny'"):
        get_dataset("listops", data_dir=str(tmp_path), size="huge")
