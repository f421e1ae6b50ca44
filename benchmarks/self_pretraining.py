"""Self-pretraining vs training from scratch ("Never Train from Scratch", Amos et al. 2024).

    python -m benchmarks.self_pretraining [--tasks listops-s4d listops-mamba pathfinder-s4d]
        [--size small] [--pretrain-steps 300] [--finetune-steps 300] [--set KEY=VALUE ...]
        [--out DIR]

For each task preset ``lra/<task>`` (which has a ``lra/<task>-spt`` pretraining preset), runs
three stages through the training library, each at ``dataset.size=<size>``:
1. pretrain: ``experiment=lra/<task>-spt`` (the task's training inputs, denoising or next-token
   objective, labels unused) for ``--pretrain-steps``;
2. finetune: ``experiment=lra/<task> trainer.init_from=<1>`` for ``--finetune-steps``;
3. scratch: ``experiment=lra/<task>`` for the same number of steps, the same seed.
``--set`` overrides go to every stage (the defaults shrink the models to run on a CPU in
minutes: 2 layers of width 64), and so do a task's own (``TASK_OVERRIDES``: Pathfinder is read as
pixel tokens, ``dataset.pixels=tokens``, in all three stages, so that the finetuned model has the
pretrained embedding and the scratch run the same inputs). Prints one row per task: test
accuracy from scratch and self-pretrained, and the pretraining loss; writes
``self_pretraining.json`` under ``--out``.
"""

import argparse
import json
import pathlib
import time

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from experiments.train import resolve
from ssm.train import train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
CPU_SIZED = ["model.n_layers=2", "model.d_model=64", "scheduler.warmup_steps=30"]
PIXEL_TOKENS = ["dataset.pixels=tokens"]  # an embedding to pretrain, and pixels to mask
TASK_OVERRIDES = {"pathfinder-s4d": PIXEL_TOKENS, "pathfinder-mamba": PIXEL_TOKENS}


def run(preset: str, output_dir: pathlib.Path, overrides: list[str]) -> dict:
    """Train ``experiment=<preset>`` with ``overrides`` into ``output_dir``; its results."""
    overrides = [
        f"experiment={preset}",
        f"trainer.output_dir={output_dir}",
        "trainer.overwrite=true",  # a rerun replaces the last one
        *overrides,
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        config = resolve(cfg)
    start = time.perf_counter()
    results = train(config)
    return {**results, "minutes": (time.perf_counter() - start) / 60}


def compare(task: str, args) -> dict:
    """The three stages of one task; a row of the table."""
    out = pathlib.Path(args.out) / task
    common = [f"dataset.size={args.size}", "trainer.progress=false", *CPU_SIZED]
    common += [*TASK_OVERRIDES.get(task, []), *args.set]
    pretrain = run(
        f"lra/{task}-spt", out / "pretrain", [*common, f"trainer.max_steps={args.pretrain_steps}"]
    )
    finetune_steps = [*common, f"trainer.max_steps={args.finetune_steps}"]
    init = f"trainer.init_from={out / 'pretrain'}"
    finetuned = run(f"lra/{task}", out / "finetune", [*finetune_steps, init])
    scratch = run(f"lra/{task}", out / "scratch", finetune_steps)
    return {
        "task": task,
        "scratch": scratch["test/accuracy"],
        "self_pretrained": finetuned["test/accuracy"],
        "pretrain_loss": pretrain["test/loss"],
        "minutes": pretrain["minutes"] + finetuned["minutes"] + scratch["minutes"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["listops-s4d", "listops-mamba", "pathfinder-s4d"]
    )
    parser.add_argument("--size", default="small")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every stage")
    parser.add_argument("--out", default="outputs/benchmarks/self_pretraining")
    args = parser.parse_args()
    rows = [compare(task, args) for task in args.tasks]
    print(f"{'task':<16} {'scratch':>8} {'self-pretrained':>16} {'pretrain loss':>14} {'min':>6}")
    for row in rows:
        print(
            f"{row['task']:<16} {row['scratch']:>8.4f} {row['self_pretrained']:>16.4f} "
            f"{row['pretrain_loss']:>14.4f} {row['minutes']:>6.1f}"
        )
    path = pathlib.Path(args.out) / "self_pretraining.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
