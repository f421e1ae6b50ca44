"""trainer.seeds: several seeds in one vmapped run equal the same seeds run one by one."""

import json

import numpy as np
from test_loop import tiny_config

from experiments.report import report
from ssm.train import train
from ssm.train.metrics import read_metrics


def config(output_dir, **trainer):
    return tiny_config(output_dir, log_every=2, tensorboard=False, **trainer)


def assert_close_records(a: list[dict], b: list[dict]):
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_allclose(x[key], y[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_seeds_in_one_vmapped_run_give_each_seeds_separate_results_and_metrics(tmp_path):
    together = train(config(tmp_path / "together", seeds=[0, 1]))
    alone = {seed: train(config(tmp_path / f"alone{seed}", seed=seed)) for seed in (0, 1)}
    assert together["seeds"] == [0, 1]
    for seed in (0, 1):
        folder = tmp_path / "together" / f"seed_{seed}"
        got = together["per_seed"][str(seed)]
        assert got["best_step"] == alone[seed]["best_step"]
        assert_close_records([got], [alone[seed]])
        assert json.loads((folder / "results.json").read_text()) == got
        assert_close_records(read_metrics(folder), read_metrics(tmp_path / f"alone{seed}"))
        assert json.loads((folder / "config.json").read_text())["trainer"]["seed"] == seed
    accuracies = [alone[seed]["test/accuracy"] for seed in (0, 1)]
    np.testing.assert_allclose(together["test/accuracy"], np.mean(accuracies), atol=1e-6)
    np.testing.assert_allclose(together["test/accuracy_std"], np.std(accuracies, ddof=1), atol=1e-6)
    assert alone[0]["test/loss"] != alone[1]["test/loss"]  # the seeds really differ
    # experiments.report reads the seeds as the runs of one configuration.
    table = report(tmp_path / "together")
    assert "2 runs, 1 configurations" in table or "2 runs, 1 configuration" in table
    assert f"{np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=1):.4f} (2)" in table
