"""Scoring a trained run again, at other dataset options: ``evaluate_run`` and its CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssm.config import ConfigError
from ssm.train import Trainer, evaluate_run, experiment_config, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch induction-heads run at l=16 (tiny splits), with its best checkpoint."""
    out = tmp_path_factory.mktemp("run")
    config = experiment_config(
        {
            "layer": {"name": "mamba", "d_state": 4},
            "dataset": {"name": "induction_heads", "seq_len": 16, "size": "tiny"},
            "model": {"d_model": 8, "n_layers": 1, "pooling": "none", "output": "none"},
            "trainer": {"batch_size": 16, "epochs": 2, "output_dir": str(out), "progress": False},
        }
    )
    train(config)
    return out


def test_evaluating_a_run_as_trained_reproduces_its_reported_test_numbers(run_dir):
    reported = json.loads((run_dir / "results.json").read_text())
    again = evaluate_run(run_dir)
    assert again["step"] == reported["best_step"]
    assert again["test/accuracy"] == reported["test/accuracy"]
    assert again["test/loss"] == pytest.approx(reported["test/loss"], rel=1e-6)
    validation = evaluate_run(run_dir, "validation")
    assert validation["validation/accuracy"] == reported["validation/accuracy"]


def test_dataset_overrides_change_what_is_scored(run_dir, monkeypatch):
    shapes = []
    original = Trainer._eval_step

    def spy(self, params, rest, batch, key):
        shapes.append(batch["inputs"].shape)
        return original(self, params, rest, batch, key)

    monkeypatch.setattr(Trainer, "_eval_step", spy)
    longer = evaluate_run(run_dir, eval_seq_len=64)
    assert shapes == [(16, 64)]  # traced once, at the new length
    assert longer["test/loss"] != evaluate_run(run_dir)["test/loss"]


@pytest.mark.parametrize(
    "args, overrides, message",
    [
        (("test", "best"), {"foo": 1}, "unknown key dataset.foo"),
        (("dev", "best"), {}, "split='dev' is not valid; valid: train, validation, test"),
        (("test", "first"), {}, "checkpoint='first' is not valid; valid: 'best', 'latest'"),
    ],
)
def test_bad_arguments_give_one_clear_error(run_dir, args, overrides, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_run(run_dir, *args, **overrides)


def test_a_folder_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="holds no config.json"):
        evaluate_run(tmp_path)


def test_cli_sweeps_lengths_prints_one_line_each_and_logs_them(run_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "-m", f"run={run_dir}"]
        + ["+dataset.eval_seq_len=16,32"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("test accuracy:")]
    assert len(lines) == 2
    assert "dataset.eval_seq_len=16" in lines[0] and "dataset.eval_seq_len=32" in lines[1]
    logged = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert [r["dataset"] for r in logged[-2:]] == [{"eval_seq_len": 16}, {"eval_seq_len": 32}]
    reported = json.loads((run_dir / "results.json").read_text())
    assert logged[-2]["test/accuracy"] == reported["test/accuracy"]
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_cli_without_a_run_says_what_to_give(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: give run=DIR, a folder written by experiments.train"
