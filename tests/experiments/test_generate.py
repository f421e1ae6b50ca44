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


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory):
    """A causal_lm run on a tiny byte corpus (one repeated sentence), 30 steps."""
    from ssm.train import experiment_config, train

    root = tmp_path_factory.mktemp("byte_run")
    (root / "corpus.txt").write_text("the cat sat on the mat. " * 200)
    config = experiment_config(
        {
            "layer": {"name": "s4d", "d_state": 8},
            "dataset": {
                "name": "bytes",
                "path": str(root / "corpus.txt"),
                "seq_len": 32,
                "data_dir": str(root / "data"),
            },
            "model": {"d_model": 16, "n_layers": 1, "dropout": 0.0, "pooling": "none"},
            "optimizer": {"lr": 1e-2},
            "trainer": {
                "objective": "causal_lm",
                "batch_size": 8,
                "max_steps": 30,
                "output_dir": str(root / "run"),
                "progress": False,
                "tensorboard": False,
            },
        }
    )
    train(config)
    return root / "run"


def test_generation_from_a_byte_level_run_is_text_and_greedy_is_deterministic_and_exact(byte_run):
    from experiments.generate import GenerateConfig, generate
    from ssm.train import load_model

    config = GenerateConfig(
        checkpoint=str(byte_run), prompt="the c", max_new_tokens=6, temperature=0
    )
    text = generate(config)
    assert isinstance(text, str) and text.startswith("the c") and len(text.encode()) == 11
    assert generate(config) == text
    model, _ = load_model(byte_run)
    tokens = list(b"the c")
    for _ in range(6):  # greedy by full recompute, no cache
        tokens.append(int(jnp.argmax(model(jnp.asarray([tokens]))[0, -1])))
    assert text == bytes(tokens).decode(errors="replace")
    sampled = GenerateConfig(checkpoint=str(byte_run), prompt="the", max_new_tokens=4, seed=3)
    assert generate(sampled) == generate(sampled)


def test_generate_cli_prints_text_of_a_byte_level_run(byte_run):
    process = run_cli(f"checkpoint={byte_run}", "prompt=the", "max_new_tokens=5", "temperature=0")
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("the") and len(process.stdout.rstrip("\n")) >= 5
