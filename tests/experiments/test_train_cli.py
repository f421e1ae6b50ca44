"""The Hydra entry point: every preset composes, bad values fail clearly, multirun works."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from experiments.train import out_of_memory, resolve
from ssm.config import ConfigError, options_of
from ssm.ops.conv import LONG_CONV
from ssm.ops.selective_scan import SELECTIVE_SCAN
from ssm.train import ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
PRESETS = sorted(
    str(p.relative_to(CONFIGS / "experiment").with_suffix(""))
    for p in (CONFIGS / "experiment").rglob("*.yaml")
)
TINY = ["model.d_model=8", "model.n_layers=1", "layer.d_state=8", "trainer.progress=false"]


def composed(overrides):
    """The typed config the CLI would build from ``overrides`` (output dir set to a fixed path)."""
    overrides = ["trainer.output_dir=/nonexistent/run", *overrides]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return resolve(cfg)


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_presets_exist():
    assert "sequential/digits-s4d" in PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_composes_into_a_typed_config(preset):
    config = composed([f"experiment={preset}"])
    assert isinstance(config, ExperimentConfig)
    assert config.name == preset


def test_default_experiment_is_sequential_digits_with_s4d():
    config = composed([])
    assert (config.name, config.layer_name, config.dataset_name) == (
        "sequential/digits-s4d",
        "s4d",
        "digits",
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "layer.init=hippo",
            "layer.init='hippo' is not valid; valid: 'legs', 'legt', 'lagt', 'fout', 'lin', 'inv',"
            " 'real', 'ptd'",
        ),
        ("model.norm=group", "model.norm='group' is not valid; valid: 'layer', 'batch'"),
        ("model.d_model=wide", "model.d_model='wide' must be an integer"),
        ("+layer.d_hidden=3", "unknown key layer.d_hidden; valid keys of layer: d_state"),
        ("scheduler.name=step", "scheduler.name='step' is not valid"),
    ],
)
def test_bad_config_values_give_one_clear_error(override, message):
    with pytest.raises(ConfigError) as error:
        composed([override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_bad_value_prints_one_error_line_and_fails():
    result = run_cli("layer.disc=euler")
    assert result.returncode != 0
    assert (
        result.stderr.strip() == "error: layer.disc='euler' is not valid; valid: 'zoh', 'bilinear'"
    )


def test_cli_out_of_range_number_prints_one_error_line_and_exits_1(tmp_path):
    result = run_cli("trainer.batch_size=-3", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: trainer.batch_size=-3 is not valid; valid: an integer >= 1"
    )


def test_cli_unknown_layer_lists_the_available_layers():
    result = run_cli("layer=lstm")
    assert result.returncode != 0
    assert "Could not find 'layer/lstm'" in result.stderr and "s4d" in result.stderr


@pytest.mark.parametrize("layer, op", [("mamba", SELECTIVE_SCAN), ("s4d", LONG_CONV)])
def test_layer_impl_accepts_every_registered_name_and_rejects_others(layer, op, monkeypatch):
    for impl in op.names():
        assert composed([f"layer={layer}", f"layer.impl={impl}"]).layer.impl == impl
    monkeypatch.setitem(op._impls, "added_later", op.get("reference"))
    assert composed([f"layer={layer}", "layer.impl=added_later"]).layer.impl == "added_later"
    monkeypatch.delitem(op._impls, "added_later")
    with pytest.raises(ConfigError) as error:
        composed([f"layer={layer}", "layer.impl=fast"])
    valid = ", ".join(repr(name) for name in op.names())
    assert str(error.value) == f"layer.impl='fast' is not valid; valid: {valid}"


def test_cli_runs_with_a_chosen_impl_and_its_options_and_rejects_an_unknown_impl(tmp_path):
    result = run_cli(
        "layer=mamba",
        "model.output=none",
        "layer.impl=chunked",
        "layer.impl_options={chunk_size:16}",
        "trainer.max_steps=2",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy:" in result.stdout
    result = run_cli("layer=mamba", "layer.impl=fast", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: layer.impl='fast' is not valid; valid: 'auto', 'associative', 'chunked', "
        "'chunked_sequential', 'pallas', 'reference'"
    )


def test_multirun_sweep_gives_one_run_dir_with_its_own_metrics_per_value(tmp_path):
    result = run_cli("-m", "optimizer.lr=1e-3,3e-3", "trainer.max_steps=4", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = tmp_path / "multirun" / "sequential" / "digits-s4d"
    runs = sorted(p.parent.name for p in sweep.glob("*/*/metrics.jsonl"))
    assert len(runs) == 2
    assert runs[0].startswith("0_") and "optimizer.lr=0.001" in runs[0]
    assert runs[1].startswith("1_") and "optimizer.lr=0.003" in runs[1]
    assert result.stdout.count("test accuracy:") == 2


def test_cli_missing_download_says_what_to_fetch_and_where(tmp_path):
    result = run_cli("experiment=sequential/smnist-s4d", f"dataset.data_dir={tmp_path}")
    assert result.returncode != 0
    message = result.stderr.strip()
    assert message.startswith("error: MNIST") and "\n" not in message
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "manual" / "mnist") in message


@pytest.mark.parametrize("layer", ["mamba", "s4d"])
def test_selective_copying_presets_are_the_benchmark_setup(layer, tmp_path):
    from benchmarks import selective_copying as benchmark

    preset = composed([f"experiment=synthetic/selective-copying-{layer}"])
    args = benchmark.parse_args([])
    setup = benchmark.experiment_config(benchmark.raw_config(layer, args, tmp_path))
    for group in ("dataset", "layer", "model", "optimizer", "scheduler"):
        assert options_of(getattr(preset, group)) == options_of(getattr(setup, group)), group
    assert (preset.trainer.batch_size, preset.trainer.max_steps) == (args.batch_size, args.steps)


def test_out_of_memory_is_one_line_with_the_remedies():
    error = jax.errors.JaxRuntimeError(
        "INTERNAL: Error dispatching computation: Out of memory allocating 42536311120 bytes.\n"
        "  at frame 1"
    )
    message = out_of_memory(error)
    assert "\n" not in message and "Out of memory allocating 42536311120 bytes" in message
    assert message.endswith("; try a smaller trainer.batch_size")
    assert out_of_memory(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shape")) is None
    assert out_of_memory(MemoryError("Out of memory")) is None
