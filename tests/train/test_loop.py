import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.data import DATASETS, Dataset, DatasetSpec
from ssm.train import Trainer, TrainingDiverged, experiment_config, train
from ssm.train.checkpoint import Checkpoints
from ssm.train.metrics import read_metrics


def tiny_config(output_dir, **trainer):
    return experiment_config(
        {
            "layer": {"name": "s4d", "d_state": 8},
            "dataset": {"name": "digits"},
            "model": {"d_model": 8, "n_layers": 1, "dropout": 0.1},
            "optimizer": {"lr": 3e-3},
            "trainer": {
                "batch_size": 256,
                "epochs": 2,
                "output_dir": str(output_dir),
                "progress": False,
                **trainer,
            },
        }
    )


def final_params(output_dir):
    checkpoints = Checkpoints(output_dir / "checkpoints")
    restored = checkpoints.restore_latest()
    checkpoints.close()
    return restored


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_ends_with_identical_parameters(tmp_path):
    full = train(tiny_config(tmp_path / "full", checkpoint_every=2))

    def crash_at_step_7(step):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_config(tmp_path / "cut", checkpoint_every=2), on_step=crash_at_step_7)
    assert final_params(tmp_path / "cut")[0] == 6  # steps 7.. are lost with the crash
    resumed = train(tiny_config(tmp_path / "cut", checkpoint_every=2, resume=True))

    step_full, state_full = final_params(tmp_path / "full")
    step_cut, state_cut = final_params(tmp_path / "cut")
    assert step_full == step_cut == 10
    for a, b in zip(jax.tree.leaves(state_full), jax.tree.leaves(state_cut), strict=True):
        np.testing.assert_array_equal(a, b)
    assert full == resumed
    # The resumed run's metrics file reads as the uninterrupted one's.
    assert read_metrics(tmp_path / "full") == read_metrics(tmp_path / "cut")


def test_same_seed_gives_identical_runs_on_cpu(tmp_path):
    a = train(tiny_config(tmp_path / "a", max_steps=3))
    b = train(tiny_config(tmp_path / "b", max_steps=3))
    assert a == b
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_run_writes_metrics_jsonl_tensorboard_and_results(tmp_path):
    results = train(tiny_config(tmp_path, epochs=1, log_every=2))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 5]
    assert any("validation/accuracy" in r for r in records)
    assert 0.0 <= results["test/accuracy"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "config.json").exists()


@pytest.mark.parametrize("best", ["first", "last"])
def test_results_give_the_best_validation_without_evaluating_it_twice(tmp_path, monkeypatch, best):
    splits = []
    evaluate, save_if_best = Trainer.evaluate, Checkpoints.save_if_best

    def spy(self, state, split):
        splits.append(split)
        return evaluate(self, state, split)

    def rank_by_epoch(self, step, state, metrics):  # the first or the last epoch is the best
        score = -step if best == "first" else step
        return save_if_best(self, step, state, {**metrics, self.best_metric: score})

    monkeypatch.setattr(Trainer, "evaluate", spy)
    monkeypatch.setattr(Checkpoints, "save_if_best", rank_by_epoch)
    results = train(tiny_config(tmp_path, epochs=3))
    logged = {r["step"]: r for r in read_metrics(tmp_path) if "epoch" in r}
    assert len(logged) == 3
    assert results["best_step"] == (min(logged) if best == "first" else max(logged))
    for key in ("validation/loss", "validation/accuracy"):
        assert results[key] == logged[results["best_step"]][key]
    # The best checkpoint is evaluated again only if it is not the state evaluated last.
    assert splits == ["validation"] * (4 if best == "first" else 3) + ["test"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    clean_step = Trainer._train_step

    def step_with_nan_inputs_from_step_4(self, state, batch):
        poison = jnp.where(state["step"] >= 3, jnp.nan, 1.0)
        return clean_step(self, state, dict(batch, inputs=batch["inputs"] * poison))

    monkeypatch.setattr(Trainer, "_train_step", step_with_nan_inputs_from_step_4)
    with pytest.raises(
        TrainingDiverged, match=r"loss became nan at step 4; stopped \(last good checkpoint: step 3"
    ):
        train(tiny_config(tmp_path, checkpoint_every=1))
    step, state = final_params(tmp_path)
    assert step == 3
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


class VariableLengthTokens:
    """In-memory examples of 3..20 tokens; the label is the first token's parity."""

    def __init__(self, count, seed):
        rng = np.random.default_rng(seed)
        self.examples = []
        for _ in range(count):
            tokens = rng.integers(1, 9, size=rng.integers(3, 21)).astype(np.int32)
            self.examples.append(
                {"inputs": tokens, "length": len(tokens), "label": int(tokens[0] % 2)}
            )

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def variable_length_tokens():
    spec = DatasetSpec("variable_length_tokens", 20, 2, None, 9, ("train", "validation", "test"))
    splits = {"train": (64, 0), "validation": (16, 1), "test": (16, 2)}
    return Dataset(spec, {k: VariableLengthTokens(*v) for k, v in splits.items()})


if "variable_length_tokens" not in DATASETS:
    DATASETS.register("variable_length_tokens")(variable_length_tokens)


def test_variable_length_batches_are_padded_to_one_shape_and_compile_once(tmp_path):
    config = experiment_config(
        {
            "layer": {"name": "s4d", "d_state": 4},
            "dataset": {"name": "variable_length_tokens"},
            "model": {"d_model": 8, "n_layers": 1},
            "trainer": {
                "batch_size": 8,
                "epochs": 1,
                "output_dir": str(tmp_path),
                "progress": False,
            },
        }
    )
    trainer = Trainer(config)
    state = trainer.initial_state
    for batch in trainer.train_loader.batches(0):
        assert batch["inputs"].shape == (8, 20)
        lengths = batch["mask"].sum(1)
        assert lengths.min() >= 3 and lengths.max() <= 20
        np.testing.assert_array_equal(batch["mask"], np.arange(20) < lengths[:, None])
        assert not np.any(batch["inputs"][~batch["mask"]])
        state, _ = trainer.train_step(state, batch)
    assert trainer.train_step._cache_size() == 1
    trainer.evaluate(state, "validation")
    assert trainer.eval_step._cache_size() == 1
