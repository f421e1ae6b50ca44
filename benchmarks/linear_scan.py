"""Speed and memory of every linear_scan implementation (h_t = a_t h_{t-1} + b_t).

    python -m benchmarks.linear_scan [--shapes small|reference] [--dtype ...] [--out DIR]

Prints a table (impl x shape: forward ms, forward+backward ms, peak memory, GB/s), writes
``linear_scan.json`` and ``linear_scan.png`` to DIR (``benchmarks.harness``). GB/s counts a and
b read once and h written once. Shapes: b batch, l length, d state width; ``kind`` real or
complex a (b is real, as complex b with complex a);
``a`` "time" (a_t per step, RG-LRU) or "shared" (one a for every step, LRU and S5 with
d = P). The reference preset is the GPU one: b=8, l=16384, d=512, and d=256 for S5-like P.
"""

import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from ssm.ops import linear_scan
from ssm.ops.linear_scan import LINEAR_SCAN

SHAPES = {
    "small": [
        dict(b=2, l=4096, d=256, kind="complex", a="shared"),
        dict(b=2, l=4096, d=256, kind="real", a="time"),
    ],
    "reference": [
        dict(b=8, l=16384, d=512, kind="complex", a="shared"),
        dict(b=8, l=16384, d=256, kind="complex", a="shared"),
        dict(b=8, l=16384, d=512, kind="real", a="time"),
    ],
}


def make_inputs(b, l, d, kind, a, dtype):  # noqa: E741 - l is the length in the shape legend
    """Stable decays a (|a| < 1) and inputs b; complex kinds are complex64 whatever ``dtype``."""
    rng = np.random.default_rng(0)
    a_shape = (d,) if a == "shared" else (b, l, d)
    decay, x = rng.uniform(0.9, 0.999, a_shape), rng.standard_normal((b, l, d))
    if kind == "complex":
        decay = decay * np.exp(1j * rng.uniform(0, np.pi, a_shape))
        x = x + 1j * rng.standard_normal((b, l, d))
        return [jnp.asarray(decay, jnp.complex64), jnp.asarray(x, jnp.complex64)]
    return [jnp.asarray(decay, dtype), jnp.asarray(x, dtype)]


BENCHMARK = harness.Benchmark(
    name="linear_scan",
    op=LINEAR_SCAN,
    shapes=SHAPES,
    shape_keys=("b", "l", "d", "kind", "a"),
    make_inputs=make_inputs,
    forward=lambda impl, **shape: lambda a, b: linear_scan(a, b, impl=impl),
    output_bytes=lambda inputs: inputs[1].nbytes,  # h
)

if __name__ == "__main__":
    harness.main(BENCHMARK, doc=__doc__)
