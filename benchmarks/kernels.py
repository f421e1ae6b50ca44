"""Speed and memory of the SSM convolution kernels: S4 (DPLR, per Cauchy impl) against S4D.

    python -m benchmarks.kernels [--shapes small|reference] [--out DIR]

Rows: ``s4d`` (ZOH + Vandermonde, ``ssm.ops.kernels``) and ``s4-<impl>`` for every registered
``ssm.ops.cauchy`` implementation (``ssm.ops.dplr.dplr_kernel``: the C̃ = C (I − Ā^L)
correction by repeated squaring of the dense Ā, then Cauchy products at the L/2 + 1 roots of
unity and an inverse FFT). Shapes: h channels, n = d_state (n/2 stored complex dims), l length,
one output copy, rank 1. The reference preset is the issue's: h = 256, n in {64, 256},
l in {1024, 16384}. Math is complex64 whatever ``--dtype``.
"""

import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from ssm.hippo import nplr
from ssm.ops.cauchy import CAUCHY
from ssm.ops.dplr import dplr_kernel
from ssm.ops.kernels import discretize_diagonal, vandermonde_kernel

SHAPES = {
    "small": [dict(h=64, n=64, l=1024), dict(h=64, n=64, l=4096)],
    "reference": [dict(h=256, n=n, l=length) for n in (64, 256) for length in (1024, 16384)],
}


class Kernels:
    """The rows: S4D's kernel and S4's kernel through each Cauchy implementation."""

    @staticmethod
    def names():
        return ["auto", "s4d", *(f"s4-{name}" for name in CAUCHY.names()[1:])]


def make_inputs(h, n, l, dtype):  # noqa: E741 - l is the length in the shape legend
    """HiPPO-LegS Λ, P, B broadcast over h channels; random C; log Δ in [log 1e-3, log 1e-1]."""
    rng = np.random.default_rng(0)
    Lambda, P, B, _ = nplr("legs", n, 1)
    C = rng.standard_normal((1, h, n // 2)) + 1j * rng.standard_normal((1, h, n // 2))
    log_dt = rng.uniform(np.log(1e-3), np.log(1e-1), h)
    arrays = [np.broadcast_to(Lambda, (h, n // 2)), np.broadcast_to(P[:, None], (1, h, n // 2))]
    arrays += [np.broadcast_to(B, (h, n // 2)), C]
    return [jnp.asarray(a, jnp.complex64) for a in arrays] + [jnp.asarray(log_dt, jnp.float32)]


def forward(impl, l, **shape):  # noqa: E741
    def kernel(Lambda, P, B, C, log_dt):
        if impl == "s4d":
            return vandermonde_kernel(*discretize_diagonal(Lambda, B, log_dt), C, l)
        return dplr_kernel(Lambda, P, B, C, log_dt, l, impl=impl.removeprefix("s4-"))

    return kernel


BENCHMARK = harness.Benchmark(
    name="kernels",
    op=Kernels,
    shapes=SHAPES,
    shape_keys=("h", "n", "l"),
    make_inputs=make_inputs,
    forward=forward,
    output_bytes=lambda inputs: 0,
)

if __name__ == "__main__":
    harness.main(BENCHMARK, doc=__doc__)
