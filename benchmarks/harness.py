"""What every op benchmark shares: timing, XLA's memory count, the table, the plot, the CLI.

An op benchmark (``benchmarks/selective_scan.py``, ``benchmarks/linear_scan.py``) gives its
shapes, its inputs and its forward program; ``main`` times every registered implementation
forward and forward+backward, prints one row per (impl, shape) and writes ``<op>.json`` and
``<op>.png``. Peak memory is the compiled program's arguments + outputs + temporaries (XLA's
memory analysis); GB/s counts the bytes the op must move (inputs read once, output written once).
"""

import argparse
import dataclasses
import json
import pathlib
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

MB = 2**20
INTERPRETED_ON_CPU = frozenset({"pallas"})  # kernels that CPU only interprets: no timing there


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One op's benchmark.

    Args:
      name: the op's name (output files ``<name>.json``, ``<name>.png``).
      op: the op's dispatch ``Op`` (its registered implementations are timed).
      shapes: preset name -> list of shape dicts (the keyword arguments of ``make_inputs``).
      shape_keys: the keys of a shape dict that name it in the table, e.g. ("b", "l", "d", "n").
      make_inputs: ``make_inputs(**shape, dtype=...)`` -> list of input arrays.
      forward: ``forward(impl, **shape)`` -> a function of the inputs returning one array.
      output_bytes: bytes of the output the op writes, from the inputs.
    """

    name: str
    op: object
    shapes: dict
    shape_keys: tuple
    make_inputs: Callable
    forward: Callable
    output_bytes: Callable

    def programs(self, impl, shape):
        """Forward and forward+backward (gradients wrt every floating input) at ``shape``."""
        forward = self.forward(impl, **shape)

        def loss(*inputs):
            y = forward(*inputs)
            return jnp.sum(jnp.real(y).astype(jnp.float32) + jnp.imag(y).astype(jnp.float32))

        def grad(*inputs):
            argnums = [i for i, a in enumerate(inputs) if jnp.issubdtype(a.dtype, jnp.inexact)]
            return jax.grad(loss, argnums=tuple(argnums))(*inputs)

        return forward, grad


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


def run(bench, shapes, impls, dtype, repeats):
    """Time every impl on every shape; print each row as it is measured."""
    rows = []
    for shape in shapes:
        inputs = bench.make_inputs(**shape, dtype=dtype)
        moved = sum(a.nbytes for a in inputs) + bench.output_bytes(inputs)
        for impl in impls:
            row = dict(impl=impl, **shape, dtype=dtype, bytes_moved=moved)
            for name, fn in zip(("fwd", "fwd_bwd"), bench.programs(impl, shape), strict=True):
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
            print_row(row, bench.shape_keys)
    return rows


def columns(shape_keys):
    """(key, title, width, format spec); text left-aligned, numbers right-aligned."""
    return [
        ("impl", "impl", 18, ""),
        ("shape", f"shape ({', '.join(shape_keys)})", 36, ""),
        ("fwd_ms", "fwd ms", 10, ".2f"),
        ("fwd_bwd_ms", "fwd+bwd ms", 12, ".2f"),
        ("fwd_peak_mb", "fwd peak MB", 12, ".1f"),
        ("fwd_bwd_peak_mb", "fwd+bwd peak MB", 16, ".1f"),
        ("fwd_gb_per_s", "fwd GB/s", 9, ".2f"),
    ]


def shape_of(row, shape_keys):
    return tuple(row[k] for k in shape_keys)


def print_header(shape_keys):
    print(
        " ".join(
            title.ljust(w) if not spec else title.rjust(w)
            for _, title, w, spec in columns(shape_keys)
        )
    )


def print_row(row, shape_keys):
    values = dict(
        row,
        shape=str(shape_of(row, shape_keys)),
        fwd_peak_mb=row.get("fwd_peak_bytes", np.nan) / MB,
        fwd_bwd_peak_mb=row.get("fwd_bwd_peak_bytes", np.nan) / MB,
    )
    cells = []
    for key, _, width, spec in columns(shape_keys):
        cell = format(values.get(key, np.nan), spec)
        cells.append(cell.rjust(width) if spec else cell.ljust(width))
    print(" ".join(cells), *(value for key, value in row.items() if key.endswith("_error")))


def plot(rows, path, title, shape_keys):
    """Bars per shape and implementation: forward ms, forward+backward ms, peak memory."""
    shapes = list(dict.fromkeys(shape_of(r, shape_keys) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    table = {(r["impl"], shape_of(r, shape_keys)): r for r in rows}
    panels = [
        ("fwd_ms", "forward ms", 1),
        ("fwd_bwd_ms", "forward+backward ms", 1),
        ("fwd_bwd_peak_bytes", "forward+backward peak MB", MB),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    width = 0.8 / len(impls)
    positions = np.arange(len(shapes))
    for ax, (key, panel_title, unit) in zip(axes, panels, strict=True):
        for i, impl in enumerate(impls):
            values = [table[impl, s].get(key, np.nan) / unit for s in shapes]
            ax.bar(positions + i * width, values, width, label=impl)
        ax.set_xticks(positions + width * (len(impls) - 1) / 2)
        ax.set_xticklabels(
            ["\n".join(f"{k}={v}" for k, v in zip(shape_keys, s, strict=True)) for s in shapes],
            fontsize=7,
        )
        ax.set_yscale("log")
        ax.set_title(panel_title)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(bench, argv=None, doc=""):
    """An op benchmark's CLI: ``--shapes``, ``--impls``, ``--dtype``, ``--repeats``, ``--out``."""
    impls = bench.op.names()[1:]
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else bench.name)
    parser.add_argument("--shapes", choices=sorted(bench.shapes), default="small")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/benchmarks"))
    parser.add_argument("--impls", nargs="+", choices=impls)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"{bench.name} on {device.device_kind} ({device.platform}), {args.dtype}")
    if device.platform == "cpu" and not args.impls and INTERPRETED_ON_CPU & set(impls):
        impls = [impl for impl in impls if impl not in INTERPRETED_ON_CPU]
        skipped = ", ".join(sorted(INTERPRETED_ON_CPU))
        print(f"not timed on CPU, where they run interpreted: {skipped} (--impls to time them)")
    print_header(bench.shape_keys)
    rows = run(bench, bench.shapes[args.shapes], args.impls or impls, args.dtype, args.repeats)
    for row in rows:
        row.update(device=device.device_kind, platform=device.platform, jax=jax.__version__)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"{bench.name}.json", args.out / f"{bench.name}.png"
    json_path.write_text(json.dumps(rows, indent=2))
    title = f"{bench.name} on {device.device_kind} ({args.dtype})"
    plot(rows, png_path, title, bench.shape_keys)
    print(f"wrote {json_path} and {png_path}")
    return rows
