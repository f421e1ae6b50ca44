"""Speed and memory of every SSD implementation (Mamba-2's scan).

    python -m benchmarks.ssd [--shapes small|reference] [--dtype ...] [--out DIR]

Prints a table (impl x shape: forward ms, forward+backward ms, peak memory, GB/s), writes
``ssd.json`` and ``ssd.png`` to DIR (``benchmarks.harness``). GB/s counts x, dt, A, B, C, D, z,
dt_bias read once and y written once. Shapes: b batch, l length, h heads, p head dim, g groups,
n state. The reference preset is the GPU one of issue 12: b=4, l=8192, h=24, p=64, n 64 and
128, chunk 256 (``CHUNK_SIZE``). There the Mamba authors' Triton kernels take 0.94 ms fwd and
6.95 ms fwd+bwd (bf16, n=64, H200). The quadratic form holds (b, h, l, l) floats, 26 GB at the
reference shape: skip it there with ``--impls reference chunked``.
"""

import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from ssm.ops.ssd import SSD, ssd

SHAPES = {
    "small": [dict(b=2, l=1024, h=8, p=32, g=1, n=32), dict(b=2, l=4096, h=8, p=32, g=1, n=32)],
    "reference": [
        dict(b=4, l=8192, h=24, p=64, g=1, n=64),
        dict(b=4, l=8192, h=24, p=64, g=1, n=128),
    ],
}
CHUNK_SIZE = 256


def make_inputs(b, l, h, p, g, n, dtype):  # noqa: E741 - l is the length in the shape legend
    """Mamba-2-like inputs: (x, dt, A, B, C, D, z, dt_bias)."""
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((b, l, h, p)),
        rng.standard_normal((b, l, h)) - 2.0,
        -rng.uniform(1, 16, h),
        rng.standard_normal((b, l, g, n)),
        rng.standard_normal((b, l, g, n)),
        np.ones(h),
        rng.standard_normal((b, l, h, p)),
        rng.standard_normal(h),
    ]
    return [jnp.asarray(a, dtype) for a in inputs]


def forward(impl, **shape):
    options = {"chunk_size": CHUNK_SIZE} if impl == "chunked" else {}

    def scan(x, dt, A, B, C, D, z, dt_bias):
        return ssd(x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=True, impl=impl, **options)

    return scan


BENCHMARK = harness.Benchmark(
    name="ssd",
    op=SSD,
    shapes=SHAPES,
    shape_keys=("b", "l", "h", "p", "g", "n"),
    make_inputs=make_inputs,
    forward=forward,
    output_bytes=lambda inputs: inputs[0].nbytes,  # y
)

if __name__ == "__main__":
    harness.main(BENCHMARK, doc=__doc__)
