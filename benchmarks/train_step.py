"""Time of one training step: the trainer's jitted step beside a plain-JAX step of the same model.

    python -m benchmarks.train_step [--shapes tiny|cpu|gpu] [--steps N] [--repeats R]
        [--cases listops mamba_lm] [--out DIR]

Cases: ``listops``, an LRA-ListOps S4D classifier (tokens, 10 classes, batch norm, postnorm,
bidirectional), and ``mamba_lm``, a causal byte-level Mamba language model. Each runs in fp32
and in bf16 compute (``model.dtype``; the SSM parameters stay fp32) on random tokens from an
in-memory dataset, on one device. ``ssm.train.Trainer(config).train_step`` is timed against a
minimal jitted step of the same SequenceModel (value_and_grad of the mean cross-entropy, one
``optax.adamw`` update), ``sync`` reading the loss to the host after every step (the old loop)
and ``async`` dispatching ``--steps`` steps back to back and blocking once at the end (the loop
now). The first step (compiling) is left out; ms/step is the median over ``--repeats``. Prints a
table and writes ``train_step.json`` to DIR.
"""

import argparse
import functools
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssm.data import DATASETS, Dataset, DatasetSpec
from ssm.train import Trainer, experiment_config
from ssm.train.loop import build_model

DATASET = "benchmark_random_tokens"

# Per preset and case: b batch, l length, d d_model, layers; gpu is the reference shape.
SHAPES = {
    "tiny": {
        "listops": dict(b=2, l=64, d=16, layers=1),
        "mamba_lm": dict(b=2, l=32, d=16, layers=1),
    },
    "cpu": {
        "listops": dict(b=8, l=2048, d=128, layers=4),
        "mamba_lm": dict(b=4, l=512, d=64, layers=2),
    },
    "gpu": {
        "listops": dict(b=32, l=2048, d=256, layers=6),
        "mamba_lm": dict(b=8, l=2048, d=512, layers=8),
    },
}


class RandomTokens:
    """``examples`` random token sequences of length ``seq_len`` (and labels if ``num_classes``)."""

    def __init__(self, examples, seq_len, vocab_size, num_classes):
        rng = np.random.default_rng(0)
        self.inputs = rng.integers(0, vocab_size, (examples, seq_len), dtype=np.int32)
        self.labels = rng.integers(0, num_classes or 1, examples, dtype=np.int32)
        self.labelled = num_classes is not None

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        example = {"inputs": self.inputs[index]}
        if self.labelled:
            example["label"] = self.labels[index]
        return example


def random_tokens(
    *, seq_len: int = 2048, vocab_size: int = 20, num_classes: int | None = 10, examples: int = 32
) -> Dataset:
    """Random tokens in memory; ``num_classes`` None gives an unlabelled corpus (language model)."""
    spec = DatasetSpec(DATASET, seq_len, num_classes or vocab_size, None, vocab_size)
    source = RandomTokens(examples, seq_len, vocab_size, num_classes)
    return Dataset(spec, {split: source for split in spec.splits})


if DATASET not in DATASETS:
    DATASETS.register(DATASET)(random_tokens)


def experiment(case: str, shape: dict, dtype: str) -> dict:
    """The experiment config (a plain dict) of ``case`` at ``shape`` in ``dtype`` compute."""
    b, l, d, layers = shape["b"], shape["l"], shape["d"], shape["layers"]
    trainer = dict(batch_size=b, max_steps=10**6, devices=1, progress=False, tensorboard=False)
    model = dict(d_model=d, n_layers=layers, dropout=0.0, dtype=dtype)
    if case == "listops":
        return dict(
            layer=dict(name="s4d", d_state=4, bidirectional=True),
            dataset=dict(name=DATASET, seq_len=l, vocab_size=20, num_classes=10, examples=b),
            model=dict(model, norm="batch", prenorm=False, pooling="mean"),
            optimizer=dict(lr=0.01, ssm_lr=0.001, weight_decay=0.05),
            scheduler=dict(name="constant"),
            trainer=trainer,
        )
    impl = "reference" if jax.default_backend() == "cpu" else "auto"
    return dict(
        layer=dict(name="mamba", d_state=16, impl=impl),
        dataset=dict(name=DATASET, seq_len=l, vocab_size=256, num_classes=None, examples=b),
        model=dict(model, norm="rms", pooling="none", output="none"),
        optimizer=dict(lr=0.003, ssm_lr=0.003, weight_decay=0.1),
        scheduler=dict(name="constant"),
        trainer=dict(trainer, objective="causal_lm"),
    )


def plain_step(trainer: Trainer):
    """(jitted donated step, state) of a minimal training step of the trainer's model."""
    config = trainer.config
    model = build_model(config, trainer.dataset.spec, config.trainer.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    tx = optax.adamw(config.optimizer.lr, weight_decay=config.optimizer.weight_decay)

    def loss_fn(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        inputs = batch["inputs"]
        logits = model(inputs, batch["mask"], train=True, key=jax.random.key(0))
        if trainer.language_model:
            logits, labels = logits[:, :-1], inputs[:, 1:]
        else:
            labels = batch["label"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return jnp.mean(losses), nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, batch):
        params, rest, opt_state = state
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), rest, opt_state), loss

    return step, jax.device_put((params, rest, tx.init(params)), jax.devices()[0])


def time_step(step, state, batch, loss_of, steps: int, repeats: int):
    """{sync: median ms per step} of ``step`` after one compiling step, with and without
    reading ``loss_of(output)`` to the host after every step."""
    state, out = step(state, batch)
    float(loss_of(out))
    times = {}
    for sync in (True, False):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                state, out = step(state, batch)
                if sync:
                    float(loss_of(out))
            jax.block_until_ready(state)
            runs.append((time.perf_counter() - start) / steps)
        times[sync] = 1e3 * statistics.median(runs)
    return times


def run(case: str, shape: dict, dtype: str, steps: int, repeats: int) -> list[dict]:
    """The rows (sync, async) of one case in one dtype."""
    trainer = Trainer(experiment_config(experiment(case, shape, dtype)))
    batch = trainer.put(next(trainer.train_loader.batches(0)))
    ours = time_step(
        trainer.train_step,
        trainer.initial_state,
        batch,
        lambda stats: stats["loss_sum"],
        steps,
        repeats,
    )
    step, state = plain_step(trainer)
    plain = time_step(step, state, batch, lambda loss: loss, steps, repeats)
    return [
        dict(
            case=case,
            dtype=dtype,
            sync="sync" if sync else "async",
            **shape,
            ms_per_step=ours[sync],
            steps_per_s=1e3 / ours[sync],
            plain_ms_per_step=plain[sync],
        )
        for sync in (True, False)
    ]


COLUMNS = [  # (key, title, width, format spec); text left-aligned, numbers right-aligned
    ("case", "case", 9, ""),
    ("shape", "shape (b, l, d, layers)", 24, ""),
    ("dtype", "dtype", 9, ""),
    ("sync", "sync", 6, ""),
    ("ms_per_step", "ms/step", 10, ".2f"),
    ("steps_per_s", "steps/s", 9, ".2f"),
    ("plain_ms_per_step", "plain ms", 10, ".2f"),
    ("overhead", "trainer/plain", 14, ".2f"),
]


def cell(text: str, width: int, spec: str) -> str:
    return text.rjust(width) if spec else text.ljust(width)


def print_row(row: dict):
    values = dict(
        row,
        shape=str((row["b"], row["l"], row["d"], row["layers"])),
        overhead=row["ms_per_step"] / row["plain_ms_per_step"],
    )
    print(" ".join(cell(format(values[key], spec), w, spec) for key, _, w, spec in COLUMNS))


def main(argv=None) -> list[dict]:
    """The CLI: time every case in each dtype, print the table, write ``train_step.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cpu" if jax.default_backend() == "cpu" else "gpu"
    parser.add_argument("--shapes", choices=sorted(SHAPES), default=default)
    parser.add_argument("--cases", nargs="+", choices=["listops", "mamba_lm"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/benchmarks"))
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"train_step on {device.device_kind} ({device.platform}), {args.steps} steps per repeat")
    print(" ".join(cell(title, w, spec) for _, title, w, spec in COLUMNS))
    rows = []
    for case in args.cases or list(SHAPES[args.shapes]):
        for dtype in args.dtypes:
            for row in run(case, SHAPES[args.shapes][case], dtype, args.steps, args.repeats):
                row.update(device=device.device_kind, platform=device.platform, jax=jax.__version__)
                print_row(row)
                rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "train_step.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
