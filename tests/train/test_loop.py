import dataclasses
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.data import DATASETS, Dataset, DatasetSpec
from ssm.train import Preempted, Trainer, TrainingDiverged, experiment_config, train
from ssm.train.checkpoint import CheckpointError, Checkpoints, non_finite_leaves
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


def crash_at_step_7(step):
    if step == 7:
        raise Interrupt


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """(folder, results) of an uninterrupted 10-step run checkpointing every 2 steps."""
    path = tmp_path_factory.mktemp("full")
    return path, train(tiny_config(path, checkpoint_every=2))


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    """The folder of the same run crashed at step 7 (latest checkpoints: steps 5 and 6)."""
    path = tmp_path_factory.mktemp("crashed")
    with pytest.raises(Interrupt):
        train(tiny_config(path, checkpoint_every=2), on_step=crash_at_step_7)
    return path


def assert_resumed_as_uninterrupted(full_run, cut: Path, resumed: dict):
    """The resumed run in ``cut`` ended bit-identical to ``full_run``: state, results, metrics."""
    full, results = full_run
    step_full, state_full = final_params(full)
    step_cut, state_cut = final_params(cut)
    assert step_full == step_cut == 10
    for a, b in zip(jax.tree.leaves(state_full), jax.tree.leaves(state_cut), strict=True):
        np.testing.assert_array_equal(a, b)
    assert results == resumed
    assert read_metrics(full) == read_metrics(cut)


def test_interrupted_and_resumed_run_ends_with_identical_parameters(
    full_run, crashed_run, tmp_path
):
    cut = tmp_path / "cut"
    shutil.copytree(crashed_run, cut)
    assert final_params(cut)[0] == 6  # steps 7.. are lost with the crash
    resumed = train(tiny_config(cut, checkpoint_every=2, resume=True))
    assert_resumed_as_uninterrupted(full_run, cut, resumed)
    assert [r["step"] for r in map(json.loads, (cut / "resumes.jsonl").open())] == [6]


def test_sigterm_checkpoints_at_the_step_boundary_and_the_resumed_run_is_bit_identical(
    full_run, tmp_path
):
    def sigterm_at_step_7(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"^SIGTERM at step 7: checkpoint saved in .*resume=true"):
        train(tiny_config(tmp_path, checkpoint_every=2), on_step=sigterm_at_step_7)
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's handler is gone again
    assert final_params(tmp_path)[0] == 7
    resumed = train(tiny_config(tmp_path, checkpoint_every=2, resume=True))
    assert_resumed_as_uninterrupted(full_run, tmp_path, resumed)


def truncate(path: Path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


DAMAGE = {
    "truncated data": lambda step: truncate(
        max((step / "default").rglob("d/*"), key=lambda f: f.stat().st_size)
    ),
    "truncated _METADATA": lambda step: truncate(step / "default" / "_METADATA"),
    "deleted _METADATA": lambda step: (step / "default" / "_METADATA").unlink(),
    "deleted default/": lambda step: shutil.rmtree(step / "default"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_with_a_one_line_warning(
    full_run, crashed_run, tmp_path, caplog, damage
):
    cut = tmp_path / "cut"
    shutil.copytree(crashed_run, cut)
    DAMAGE[damage](cut / "checkpoints" / "latest" / "6")
    with caplog.at_level(logging.WARNING, logger="ssm"):
        resumed = train(tiny_config(cut, checkpoint_every=2, resume=True))
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "ssm"]
    assert "checkpoint step 6" in warning and "is damaged" in warning
    assert warning.endswith("falling back to step 5") and "\n" not in warning
    assert_resumed_as_uninterrupted(full_run, cut, resumed)


def test_no_readable_checkpoint_is_one_clear_error(crashed_run, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(crashed_run, cut)
    for step in (5, 6):
        DAMAGE["deleted default/"](cut / "checkpoints" / "latest" / str(step))
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .* \(tried steps 6, 5\)"):
        train(tiny_config(cut, checkpoint_every=2, resume=True))


def test_a_huge_learning_rate_stops_naming_a_finite_checkpoint_that_resumes_at_a_sane_lr(tmp_path):
    def config(lr, **trainer):
        raw = dataclasses.asdict(tiny_config(tmp_path, checkpoint_every=1, **trainer))
        raw = {k: raw[k] for k in ("model", "optimizer", "trainer")}
        return experiment_config(
            {
                **raw,
                "layer": {"name": "s4d", "d_state": 8},
                "dataset": {"name": "digits"},
                "optimizer": {"lr": lr},
            }
        )

    with pytest.raises(TrainingDiverged, match=r"last good checkpoint: step \d+") as error:
        train(config(1e39))
    named = int(re.search(r"last good checkpoint: step (\d+)", str(error.value)).group(1))
    step, state = final_params(tmp_path)
    assert step == named  # 1e39 overflows float32: step 1 is NaN, step 0 is the finite start
    assert non_finite_leaves(state) == []
    results = train(config(3e-3, resume=True))
    assert results["step"] == 10 and np.isfinite(results["test/loss"])
    (record,) = map(json.loads, (tmp_path / "resumes.jsonl").open())
    assert record["step"] == named and record["changed"] == {"optimizer.lr": [1e39, 3e-3]}


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
        TrainingDiverged, match=r"diverged at step 4 .*; stopped \(last good checkpoint: step 3"
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


def test_a_checkpoint_from_before_the_divergence_flag_still_restores(tmp_path):
    import orbax.checkpoint as ocp

    like = Trainer(tiny_config(tmp_path)).initial_state
    older = {k: v for k, v in like.items() if k != "diverged_at"}
    older = dict(older, params=jax.tree.map(lambda x: x + 1, older["params"]))
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.latest.save(3, args=ocp.args.StandardSave(older))
    checkpoints.latest.wait_until_finished()
    step, state = checkpoints.restore_latest(like)
    checkpoints.close()
    assert step == 3 and int(state["diverged_at"]) == 0
    for a, b in zip(
        jax.tree.leaves(older), jax.tree.leaves(dict(state, diverged_at=None)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
