"""Speed and memory of every selective_scan implementation.

    python -m benchmarks.selective_scan [--shapes small|reference] [--out DIR]

Prints a table (impl x shape: forward ms, forward+backward ms, peak memory, GB/s), writes
``selective_scan.json`` and ``selective_scan.png`` to DIR. Peak memory is the compiled program's
arguments + outputs + temporaries (XLA's memory analysis). GB/s counts the bytes the op must
move: the inputs x, dt, z, B, C, A, D, dt_bias read once and y written once. Shapes: b batch,
l length, d channels, n state.
"""

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from ssm.ops import selective_scan
from ssm.ops.selective_scan import SELECTIVE_SCAN

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

SHAPES = {
    "small": [dict(b=2, l=1024, d=64, n=16), dict(b=2, l=4096, d=64, n=16)],
    "reference": [dict(b=4, l=8192, d=1536, n=16)],
}
MB = 2**20


def make_inputs(b, l, d, n, dtype):  # noqa: E741 - l is the length in the shape legend
    """Mamba-like inputs: (x, dt, A, B, C, D, z, dt_bias)."""
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((b, l, d)),
        rng.standard_normal((b, l, d)) - 2.0,
        -np.exp(rng.standard_normal((d, n))),
        rng.standard_normal((b, l, n)),
        rng.standard_normal((b, l, n)),
        rng.standard_normal(d),
        rng.standard_normal((b, l, d)),
        rng.standard_normal(d),
    ]
    return [jnp.asarray(a, dtype) for a in inputs]


def programs(impl):
    """Forward and forward+backward (grads wrt every input) of one implementation."""

    def forward(x, dt, A, B, C, D, z, dt_bias):
        return selective_scan(x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=True, impl=impl)

    def loss(*inputs):
        return jnp.sum(forward(*inputs).astype(jnp.float32))

    return forward, jax.grad(loss, argnums=tuple(range(8)))


def measure(fn, inputs, repeats):
    """Compile fn, then (median ms over repeats, peak bytes, temporary bytes)."""
    compiled = jax.jit(fn).lower(*inputs).compile()
    memory = compiled.memory_analysis()
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    jax.block_until_ready(compiled(*inputs))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), peak, memory.temp_size_in_bytes


def run(shapes, impls, dtype, repeats):
    rows = []
    for shape in shapes:
        inputs = make_inputs(**shape, dtype=dtype)
        moved = sum(a.nbytes for a in inputs) + inputs[0].nbytes  # inputs read, y written
        for impl in impls:
            row = dict(impl=impl, **shape, dtype=dtype, bytes_moved=moved)
            forward, grad = programs(impl)
            for name, fn in (("fwd", forward), ("fwd_bwd", grad)):
                try:
                    ms, peak, temp = measure(fn, inputs, repeats)
                except Exception as err:  # e.g. out of memory: record it, keep going
                    row[f"{name}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                    continue
                row.update(
                    {f"{name}_ms": ms, f"{name}_peak_bytes": peak, f"{name}_temp_bytes": temp}
                )
            if "fwd_ms" in row:
                row["fwd_gb_per_s"] = moved / (row["fwd_ms"] * 1e-3) / 1e9
            rows.append(row)
            print_row(row)
    return rows


COLUMNS = [  # key, title, width, format spec; text left-aligned, numbers right-aligned
    ("impl", "impl", 18, ""),
    ("shape", "shape (b, l, d, n)", 22, ""),
    ("fwd_ms", "fwd ms", 10, ".2f"),
    ("fwd_bwd_ms", "fwd+bwd ms", 12, ".2f"),
    ("fwd_peak_mb", "fwd peak MB", 12, ".1f"),
    ("fwd_bwd_peak_mb", "fwd+bwd peak MB", 16, ".1f"),
    ("fwd_gb_per_s", "fwd GB/s", 9, ".2f"),
]


def shape_of(row):
    return (row["b"], row["l"], row["d"], row["n"])


def print_header():
    print(" ".join(title.ljust(w) if not spec else title.rjust(w) for _, title, w, spec in COLUMNS))


def print_row(row):
    values = dict(
        row,
        shape=str(shape_of(row)),
        fwd_peak_mb=row.get("fwd_peak_bytes", np.nan) / MB,
        fwd_bwd_peak_mb=row.get("fwd_bwd_peak_bytes", np.nan) / MB,
    )
    cells = []
    for key, _, width, spec in COLUMNS:
        cell = format(values.get(key, np.nan), spec)
        cells.append(cell.rjust(width) if spec else cell.ljust(width))
    print(" ".join(cells), *(value for key, value in row.items() if key.endswith("_error")))


def plot(rows, path):
    """Bars per shape and implementation: forward ms, forward+backward ms, peak memory."""
    shapes = sorted({shape_of(r) for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    table = {(r["impl"], shape_of(r)): r for r in rows}
    panels = [
        ("fwd_ms", "forward ms", 1),
        ("fwd_bwd_ms", "forward+backward ms", 1),
        ("fwd_bwd_peak_bytes", "forward+backward peak MB", MB),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    width = 0.8 / len(impls)
    positions = np.arange(len(shapes))
    for ax, (key, title, unit) in zip(axes, panels, strict=True):
        for i, impl in enumerate(impls):
            values = [table[impl, s].get(key, np.nan) / unit for s in shapes]
            ax.bar(positions + i * width, values, width, label=impl)
        ax.set_xticks(positions + width * (len(impls) - 1) / 2)
        ax.set_xticklabels([f"l={l}\nb={b} d={d} n={n}" for b, l, d, n in shapes])
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"selective_scan on {rows[0]['device']} ({rows[0]['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="small")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/benchmarks"))
    parser.add_argument("--impls", nargs="+", choices=SELECTIVE_SCAN.names()[1:])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"selective_scan on {device.device_kind} ({device.platform}), {args.dtype}")
    print_header()
    rows = run(
        SHAPES[args.shapes], args.impls or SELECTIVE_SCAN.names()[1:], args.dtype, args.repeats
    )
    for row in rows:
        row.update(device=device.device_kind, platform=device.platform, jax=jax.__version__)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selective_scan.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "selective_scan.png")
    print(f"wrote {args.out / 'selective_scan.json'} and {args.out / 'selective_scan.png'}")


if __name__ == "__main__":
    main()
