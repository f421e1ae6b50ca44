"""The generate entry point: loads a saved LM and prints the same tokens as in-process generate."""

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx

from experiments.generate import prompt_tokens
from ssm.config import ConfigError
from ssm.models import LanguageModel, save_lm

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "experiments.generate", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_cli_prints_the_greedy_tokens_of_the_saved_model_and_writes_nothing(tmp_path):
    model = LanguageModel(13, 16, 2, layer_options=dict(d_state=4), rngs=nnx.Rngs(3))
    save_lm(tmp_path / "lm", model)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = run_cli(
        f"checkpoint={tmp_path / 'lm'}",
        "prompt=1 2 3",
        "max_new_tokens=7",
        "temperature=0",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    expected = model.generate(jnp.array([[1, 2, 3]]), 7, temperature=0)[0].tolist()
    assert result.stdout.split() == [str(t) for t in expected]
    assert list(workdir.iterdir()) == []  # no Hydra outputs or logs


def test_generate_cli_fails_in_one_line_without_a_checkpoint(tmp_path):
    result = run_cli(f"checkpoint={tmp_path / 'missing'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no language model checkpoint at {tmp_path / 'missing'}: expected model.json and "
        "params/ (written by ssm.models.save_lm)"
    ]


@pytest.mark.parametrize(
    ("prompt", "tokens"), [("1 2 3", [1, 2, 3]), ("4,5", [4, 5]), (7, [7]), ((0, 9), [0, 9])]
)
def test_prompt_tokens_parses_every_accepted_form(prompt, tokens):
    assert prompt_tokens(prompt) == tokens


def test_prompt_tokens_rejects_words():
    with pytest.raises(ConfigError, match="must be integer token ids"):
        prompt_tokens("1 a")
