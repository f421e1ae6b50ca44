"""Is the loader the bottleneck? Loader examples/s next to the training step's examples/s.

    python -m benchmarks.data_loading [--size small] [--batches 20] [--steps 5] [--set KEY=VALUE]

For ListOps and Pathfinder-32 (their ``lra/*-s4d`` presets, at ``--size``), times the train split's
``Loader`` at the preset's batch size (reading, padding, batching; one warm-up batch) and the
preset's jitted train step on those batches (compiled first), and prints both rates. ``--set``
overrides preset values for both (e.g. ``--set model.n_layers=2``). The loader should be well
ahead of the step; on an accelerator the step is far faster than on CPU.
"""

import argparse
import pathlib
import tempfile
import time

import jax
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ssm.train import Trainer, experiment_config

PRESETS = {"ListOps": "lra/listops-s4d", "Pathfinder-32": "lra/pathfinder-s4d"}
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(preset: str, size: str, overrides: list[str], output_dir: str):
    """The typed ExperimentConfig of a preset, as ``experiments/train.py`` would build it."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "config",
            [f"experiment={preset}", f"dataset.size={size}", *overrides]
            + [f"trainer.output_dir={output_dir}", f"name={preset}"],
        )
    return experiment_config(OmegaConf.to_container(cfg, resolve=True))


def loader_rate(loader, batches: int) -> float:
    """Examples per second over ``batches`` batches after one warm-up batch."""
    iterator = loader.batches(0)
    next(iterator)
    start, count = time.perf_counter(), 0
    for _, batch in zip(range(batches), iterator, strict=False):
        count += len(batch["label"])
    return count / (time.perf_counter() - start)


def step_rate(trainer: Trainer, steps: int) -> float:
    """Examples per second of the jitted train step (compiled on a first, untimed step)."""
    batches = trainer.train_loader.batches(0)
    state = trainer.initial_state
    state, stats = trainer.train_step(state, next(batches))
    jax.block_until_ready(stats)
    held = [next(batches) for _ in range(steps)]
    start = time.perf_counter()
    for batch in held:
        state, stats = trainer.train_step(state, batch)
    jax.block_until_ready(stats)
    return steps * trainer.config.trainer.batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--batches", type=int, default=20, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=5, help="train steps timed")
    parser.add_argument("--set", action="append", default=[], help="Hydra override, repeatable")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as output_dir:
        for name, preset in PRESETS.items():
            trainer = Trainer(load_config(preset, args.size, args.set, output_dir))
            b = trainer.config.trainer.batch_size
            loading = loader_rate(trainer.train_loader, args.batches)
            training = step_rate(trainer, args.steps)
            rows.append((name, b, trainer.dataset.spec.seq_len, loading, training))
    print(f"device: {jax.devices()[0].device_kind}, dataset size: {args.size}, set: {args.set}")
    print(f"{'dataset':<14} {'b':>4} {'l':>6} {'loader ex/s':>12} {'train ex/s':>11} {'ratio':>7}")
    for name, b, l, loading, training in rows:  # noqa: E741 - l is the length
        ratio = loading / training
        print(f"{name:<14} {b:>4} {l:>6} {loading:>12.0f} {training:>11.1f} {ratio:>7.1f}")


if __name__ == "__main__":
    main()
