"""Loss curves of one Mamba language model trained with each selective-scan implementation.

    python -m benchmarks.impl_loss_curves [--impls chunked pallas] [--shape tiny|gpu]
        [--steps N] [--dtype float32|bfloat16] [--out DIR]

Every impl trains the same model (same initial weights) on the same batches: byte windows of
this interpreter's standard-library sources, read directly (no TFDS, so it runs on the GPU image).
An implementation that is correct gives the curve of the others within rounding (bf16 noise);
a wrong gradient shows as a curve that drifts away. Prints the final losses, the largest gap
between curves and ms per step; writes ``impl_loss_curves.json`` and ``impl_loss_curves.png``.
"""

import argparse
import json
import pathlib
import sysconfig
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx

from ssm.models.lm import LanguageModel

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

# b batch, l length, d d_model; gpu: a GPU-sized LM, trained "a few hundred steps" (issue 13).
SHAPES = {
    "tiny": dict(b=2, l=32, d=16, layers=1, corpus_bytes=200_000),
    "gpu": dict(b=8, l=2048, d=512, layers=8, corpus_bytes=50_000_000),
}


def stdlib_bytes(limit: int) -> np.ndarray:
    """Up to ``limit`` bytes of the standard library's ``*.py`` files in sorted path order."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or total >= limit:
            continue
        chunks.append(np.frombuffer(path.read_bytes(), np.uint8))
        total += chunks[-1].size
    return np.concatenate(chunks)[:limit].astype(np.int32)


def batches(stream: np.ndarray, steps: int, b: int, length: int, seed: int = 0) -> np.ndarray:
    """(steps, b, length + 1) windows at seeded random offsets: the same for every impl."""
    starts = np.random.default_rng(seed).integers(0, stream.size - length - 1, (steps, b))
    return stream[starts[..., None] + np.arange(length + 1)]


def train(impl: str, data: np.ndarray, shape: dict, dtype: str, lr: float) -> dict:
    """Train from seed 0 with ``impl``: {"loss": [per step], "ms_per_step": median after step 0}."""
    model = LanguageModel(
        256,
        shape["d"],
        shape["layers"],
        layer="mamba",
        layer_options={"impl": impl},
        dtype=dtype,
        rngs=nnx.Rngs(0),
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.01))
    graphdef, params = nnx.split(model)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, window):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(window[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, window[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, times = [], []
    for window in data:
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, jnp.asarray(window))
        losses.append(float(loss))  # one host sync a step: the same for every impl
        times.append(time.perf_counter() - start)
    return {"loss": losses, "ms_per_step": 1e3 * float(np.median(times[1:] or times))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", nargs="+", default=["chunked", "pallas"])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/benchmarks"))
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    device = jax.devices()[0]
    print(f"Mamba LM {shape} on {device.device_kind}, {args.dtype}, {args.steps} steps")
    data = batches(stdlib_bytes(shape["corpus_bytes"]), args.steps, shape["b"], shape["l"])
    curves = {impl: train(impl, data, shape, args.dtype, args.lr) for impl in args.impls}
    losses = np.array([curves[impl]["loss"] for impl in args.impls])  # (impls, steps)
    gap = float(np.max(np.abs(losses - losses[0]))) if len(losses) else 0.0
    for impl in args.impls:
        loss, ms = curves[impl]["loss"], curves[impl]["ms_per_step"]
        print(f"{impl:20s} first {loss[0]:.4f}  last {loss[-1]:.4f}  {ms:.1f} ms/step")
    print(f"largest gap between curves: {gap:.4f} nats (from {args.impls[0]})")
    result = dict(
        shape=shape, dtype=args.dtype, steps=args.steps, lr=args.lr, curves=curves, max_gap=gap
    )
    result.update(device=device.device_kind, platform=device.platform, jax=jax.__version__)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "impl_loss_curves.json").write_text(json.dumps(result, indent=2))
    fig, ax = plt.subplots(figsize=(6, 4))
    for impl in args.impls:
        ax.plot(curves[impl]["loss"], label=impl, linewidth=1)
    ax.set(xlabel="step", ylabel="train loss (nats/byte)", title=f"Mamba LM, {args.dtype}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "impl_loss_curves.png", dpi=120)
    print(f"wrote {args.out / 'impl_loss_curves.json'} and {args.out / 'impl_loss_curves.png'}")
    return result


if __name__ == "__main__":
    main()
