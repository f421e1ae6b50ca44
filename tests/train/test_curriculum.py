"""``trainer.curriculum``: stages trained on a changed dataset before the configured one."""

import jax
import numpy as np
import pytest

from ssm.config import ConfigError
from ssm.data import Loader, get_dataset
from ssm.train import Trainer, experiment_config, train
from ssm.train.checkpoint import Checkpoints
from ssm.train.metrics import read_metrics

STAGES = [{"steps": 3, "dataset": {"seq_len": 8}}, {"steps": 2, "dataset": {"seq_len": 12}}]
SPLITS = {"num_train": 32, "num_val": 16, "num_test": 16}  # 2 steps per epoch at batch 16


def config(output_dir, curriculum=STAGES, dataset=None, **trainer):
    return experiment_config(
        {
            "layer": {"name": "s4d", "d_state": 4},
            "dataset": {"name": "induction_heads", "seq_len": 16, **SPLITS, **(dataset or {})},
            "model": {"d_model": 8, "n_layers": 1, "pooling": "none"},
            "trainer": {
                "batch_size": 16,
                "max_steps": 8,
                "curriculum": curriculum,
                "output_dir": str(output_dir),
                "progress": False,
                "tensorboard": False,
                **trainer,
            },
        }
    )


def batches_from(trainer, step):
    """Every training batch from ``step`` to the end, fetched as the loop fetches them."""
    out = []
    while step < trainer.total_steps:
        for batch in trainer.train_batches(step):
            out.append(batch)
            step += 1
            if step == trainer.total_steps:
                break
    return out


def test_each_stage_feeds_its_own_dataset_then_the_configured_one_from_epoch_0(tmp_path):
    trainer = Trainer(config(tmp_path))
    batches = batches_from(trainer, 0)
    assert [b["inputs"].shape[1] for b in batches] == [8, 8, 8, 12, 12, 16, 16, 16]

    def loader_batches(seq_len, count):
        dataset = get_dataset("induction_heads", seq_len=seq_len, **SPLITS)
        loader = Loader(dataset.source("train"), 16, seed=0, pad_to=seq_len)
        return [b for epoch in range(2) for b in loader.batches(epoch)][:count]

    # The first stage crosses an epoch of its dataset; the configured one starts at its epoch 0.
    expected = loader_batches(8, 3) + loader_batches(12, 2) + loader_batches(16, 3)
    for got, want in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(got["inputs"], want["inputs"])
        np.testing.assert_array_equal(got["label"], want["label"])
    # Starting mid-way (a resume) gives the same batches as going through.
    for step in (2, 3, 4, 6):
        for got, want in zip(batches_from(trainer, step), batches[step:], strict=True):
            np.testing.assert_array_equal(got["inputs"], want["inputs"])


def test_without_max_steps_the_epochs_count_after_the_curriculum(tmp_path):
    trainer = Trainer(config(tmp_path, max_steps=None, epochs=3))
    assert trainer.total_steps == 5 + 3 * 2


def final_state(output_dir):
    checkpoints = Checkpoints(output_dir / "checkpoints")
    try:
        return checkpoints.restore_latest()
    finally:
        checkpoints.close()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("crash_at", [2, 4])  # inside the first stage, inside the second
def test_a_run_resumed_inside_a_stage_ends_bit_identical(tmp_path, crash_at):
    full = train(config(tmp_path / "full", checkpoint_every=1))

    def crash(step):
        if step == crash_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config(tmp_path / "cut", checkpoint_every=1), on_step=crash)
    resumed = train(config(tmp_path / "cut", checkpoint_every=1, resume=True))
    (step_full, state_full), (step_cut, state_cut) = map(
        final_state, (tmp_path / "full", tmp_path / "cut")
    )
    assert step_full == step_cut == 8
    for a, b in zip(jax.tree.leaves(state_full), jax.tree.leaves(state_cut), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed == full
    assert read_metrics(tmp_path / "full") == read_metrics(tmp_path / "cut")


@pytest.mark.parametrize(
    "curriculum, trainer, message",
    [
        (
            [{"steps": 2, "dataset": {"seq_length": 8}}],
            {},
            r"^unknown key trainer\.curriculum\[0\]\.dataset\.seq_length; valid keys .*seq_len",
        ),
        (
            [{"steps": 2, "dataset": {"seq_len": 2}}],
            {},
            r"^trainer\.curriculum\[0\]\.dataset\.seq_len=2 is not valid",
        ),
        (
            [{"steps": 2}, {"steps": 1, "dataset": {"data_vocab": 8}}],
            {},
            r"^trainer\.curriculum\[1\]\.dataset changes the dataset's num_classes \(16 -> 8\)",
        ),
        (STAGES, {"max_steps": 5}, r"^trainer\.curriculum's 5 steps leave none of .*max_steps=5"),
        ([{"steps": 0}], {}, r"^trainer\.curriculum\[0\]\.steps=0 is not valid"),
        (
            [{"steps": 2, "dataset": {"num_train": 8}}],
            {},
            r"^trainer\.batch_size=16 is larger than the training split \(8 examples\)",
        ),
    ],
)
def test_a_bad_stage_is_one_clear_error(tmp_path, curriculum, trainer, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(config(tmp_path, curriculum=curriculum, **trainer))


def test_validation_comes_once_per_epoch_of_the_configured_dataset_after_the_curriculum(tmp_path):
    results = train(config(tmp_path, max_steps=None, epochs=2))
    validated = [row for row in read_metrics(tmp_path) if "epoch" in row]
    assert [(row["step"], row["epoch"]) for row in validated] == [(7, 1.0), (9, 2.0)]
    assert results["best_step"] in (7, 9)
