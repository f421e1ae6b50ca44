"""Speed and memory of every selective_scan implementation.

    python -m benchmarks.selective_scan [--shapes small|reference] [--dtype ...] [--out DIR]

Prints a table (impl x shape: forward ms, forward+backward ms, peak memory, GB/s), writes
``selective_scan.json`` and ``selective_scan.png`` to DIR (``benchmarks.harness``). GB/s counts
the inputs x, dt, z, B, C, A, D, dt_bias read once and y written once. Shapes: b batch,
l length, d channels, n state.
"""

import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from ssm.ops import selective_scan
from ssm.ops.selective_scan import SELECTIVE_SCAN

SHAPES = {
    "small": [dict(b=2, l=1024, d=64, n=16), dict(b=2, l=4096, d=64, n=16)],
    "reference": [dict(b=4, l=8192, d=1536, n=16)],
}


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


def forward(impl, **shape):
    def scan(x, dt, A, B, C, D, z, dt_bias):
        return selective_scan(x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=True, impl=impl)

    return scan


BENCHMARK = harness.Benchmark(
    name="selective_scan",
    op=SELECTIVE_SCAN,
    shapes=SHAPES,
    shape_keys=("b", "l", "d", "n"),
    make_inputs=make_inputs,
    forward=forward,
    output_bytes=lambda inputs: inputs[0].nbytes,  # y
)

if __name__ == "__main__":
    harness.main(BENCHMARK, doc=__doc__)
