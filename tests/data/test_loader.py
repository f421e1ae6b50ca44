"""Grain loading: per-epoch shuffles that are a function of (seed, epoch), exact resume."""

import numpy as np
import pytest

from ssm.data import Loader, get_dataset


def numbered_source(n: int, length: int = 6) -> list[dict]:
    """Examples whose label i and every input value i identify them: inputs (length, 2)."""
    return [{"inputs": np.full((length, 2), i, np.float32), "label": i} for i in range(n)]


def epoch_labels(loader: Loader, epoch: int, start: int = 0) -> list[list[int]]:
    return [batch["label"].tolist() for batch in loader.batches(epoch, start)]


def test_loader_yields_every_example_exactly_once_per_epoch_without_drop():
    loader = Loader(numbered_source(23), 5, seed=0, drop_remainder=False)
    assert loader.steps_per_epoch == 5
    for epoch in range(3):
        batches = list(loader.batches(epoch))
        assert [len(b["label"]) for b in batches] == [5, 5, 5, 5, 3]
        labels = np.concatenate([b["label"] for b in batches])
        assert sorted(labels.tolist()) == list(range(23))
        for b in batches:
            np.testing.assert_array_equal(b["inputs"][:, 0, 0], b["label"])


def test_loader_drop_remainder_keeps_only_full_batches_of_distinct_examples():
    loader = Loader(numbered_source(23), 5, seed=0)
    batches = epoch_labels(loader, 0)
    assert loader.steps_per_epoch == len(batches) == 4
    assert all(len(b) == 5 for b in batches)
    assert len(set(sum(batches, []))) == 20


def test_loader_orders_differ_between_epochs():
    loader = Loader(numbered_source(64), 8, seed=0)
    orders = [epoch_labels(loader, epoch) for epoch in range(4)]
    assert all(a != b for i, a in enumerate(orders) for b in orders[i + 1 :])


def test_loader_same_seed_gives_same_order_and_another_seed_another_order():
    source = numbered_source(64)
    first, again, other = (Loader(source, 8, seed=s) for s in (7, 7, 8))
    assert epoch_labels(first, 2) == epoch_labels(again, 2)
    assert epoch_labels(first, 2) != epoch_labels(other, 2)


@pytest.mark.parametrize("epoch", [0, 3])
def test_loader_resume_at_epoch_and_step_yields_the_tail_of_the_uninterrupted_epoch(epoch):
    loader = Loader(numbered_source(50), 4, seed=1, drop_remainder=False)
    uninterrupted = list(loader.batches(epoch))
    for start in (0, 1, 5, loader.steps_per_epoch - 1, loader.steps_per_epoch):
        resumed = list(
            Loader(numbered_source(50), 4, seed=1, drop_remainder=False).batches(epoch, start)
        )
        assert len(resumed) == len(uninterrupted) - start
        for a, b in zip(resumed, uninterrupted[start:], strict=True):
            for key in ("inputs", "mask", "label"):
                np.testing.assert_array_equal(a[key], b[key])


def test_loader_without_shuffle_keeps_source_order_and_last_partial_batch():
    loader = Loader(numbered_source(10), 4, seed=0, shuffle=False, drop_remainder=False)
    assert (
        epoch_labels(loader, 0) == epoch_labels(loader, 5) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    )


def test_loader_mask_is_true_exactly_at_the_first_length_positions():
    source = [{"inputs": np.arange(6, dtype=np.int32), "label": 0, "length": n} for n in (6, 1, 3)]
    batch = next(Loader(source, 3, seed=0, shuffle=False).batches(0))
    assert batch["inputs"].shape == (3, 6) and batch["inputs"].dtype == np.int32
    assert batch["mask"].dtype == bool
    np.testing.assert_array_equal(batch["mask"].sum(axis=1), [6, 1, 3])
    np.testing.assert_array_equal(batch["mask"][2], [True, True, True, False, False, False])


def test_loader_digits_batches_have_documented_shapes_and_all_true_mask(tmp_path):
    digits = get_dataset("digits", data_dir=str(tmp_path))
    train = next(Loader(digits.source("train"), 32, seed=0).batches(0))
    assert train["inputs"].shape == (32, 64, 1) and train["inputs"].dtype == np.float32
    assert train["label"].shape == (32,) and train["label"].dtype == np.int32
    assert train["mask"].shape == (32, 64) and train["mask"].all()
    test = Loader(digits.source("test"), 64, seed=0, shuffle=False, drop_remainder=False)
    batches = list(test.batches(0))
    assert [len(b["label"]) for b in batches] == [64, 64, 52]
    assert all(b["mask"].all() for b in batches)


def test_loader_rejects_start_outside_the_epoch_and_batches_larger_than_the_source():
    loader = Loader(numbered_source(10), 4, seed=0)
    with pytest.raises(ValueError, match=r"start must be in \[0, 2\]"):
        next(loader.batches(0, start=3))
    with pytest.raises(ValueError, match="no batch of 11 from 10 examples"):
        Loader(numbered_source(10), 11, seed=0)


def ragged_source(lengths) -> list[dict]:
    """Token examples i of the given lengths, unpadded: inputs i+1 repeated, ``length``, label i."""
    return [
        {"inputs": np.full(n, i + 1, np.int32), "length": n, "label": i}
        for i, n in enumerate(lengths)
    ]


def test_loader_pads_ragged_examples_to_the_batch_longest_with_zeros_and_mask():
    loader = Loader(ragged_source([3, 7, 5, 2, 4]), 3, seed=0, shuffle=False, drop_remainder=False)
    first, second = loader.batches(0)
    assert first["inputs"].shape == (3, 7) and second["inputs"].shape == (2, 4)
    np.testing.assert_array_equal(first["mask"].sum(axis=1), [3, 7, 5])
    np.testing.assert_array_equal(first["inputs"][0], [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(first["inputs"] != 0, first["mask"])


def test_loader_pad_to_fixes_the_length_and_cuts_only_padding():
    padded = [
        dict(e, inputs=np.pad(e["inputs"], (0, 10 - e["length"]))) for e in ragged_source([6, 2, 5])
    ]
    batch = next(Loader(padded, 3, seed=0, shuffle=False, pad_to=6).batches(0))
    assert batch["inputs"].shape == (3, 6)
    np.testing.assert_array_equal(batch["mask"].sum(axis=1), [6, 2, 5])
    assert next(Loader(padded, 3, seed=0, shuffle=False, pad_to=12).batches(0))["inputs"].shape == (
        3,
        12,
    )
    with pytest.raises(ValueError, match="6 valid positions, more than length 4"):
        next(Loader(padded, 3, seed=0, shuffle=False, pad_to=4).batches(0))


def test_loader_pads_pairs_and_per_position_labels_along_their_position_axis():
    pairs = [
        {"inputs": np.ones((2, n), np.int32), "length": np.array([n, 1]), "label": 0}
        for n in (2, 5)
    ]
    batch = next(Loader(pairs, 2, seed=0, shuffle=False).batches(0))
    assert batch["inputs"].shape == batch["mask"].shape == (2, 2, 5)
    np.testing.assert_array_equal(batch["mask"].sum(axis=2), [[2, 1], [5, 1]])
    tagged = [
        {"inputs": np.ones(n, np.int32), "label": np.arange(n), "label_mask": np.ones(n, bool)}
        for n in (3, 4)
    ]
    batch = next(Loader(tagged, 2, seed=0, shuffle=False).batches(0))
    assert batch["label"].shape == batch["label_mask"].shape == (2, 4)
    np.testing.assert_array_equal(batch["label_mask"].sum(axis=1), [3, 4])


@pytest.mark.parametrize("hosts", [2, 4])
def test_host_shards_hold_the_rows_of_each_global_batch_between_them(hosts):
    whole = Loader(numbered_source(50), 8, seed=3)
    shards = [Loader(numbered_source(50), 8, seed=3, shard=(i, hosts)) for i in range(hosts)]
    assert all(s.steps_per_epoch == whole.steps_per_epoch == 6 for s in shards)
    for epoch, start in ((0, 0), (1, 2)):
        parts = [epoch_labels(s, epoch, start) for s in shards]
        for step, batch in enumerate(epoch_labels(whole, epoch, start)):
            rows = [part[step] for part in parts]
            assert all(len(r) == 8 // hosts for r in rows)
            assert sorted(sum(rows, [])) == sorted(batch)


def test_a_batch_that_does_not_split_over_the_hosts_is_refused():
    with pytest.raises(ValueError, match="batch_size 6 does not split over 4 hosts"):
        Loader(numbered_source(50), 6, seed=0, shard=(0, 4))
