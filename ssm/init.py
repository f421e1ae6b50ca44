"""Initializers of every layer in one place: S4D's diagonal A, Mamba's Δ and Linear layers."""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.hippo import legs_diagonal

S4DInit = Literal["legs", "lin", "inv", "real"]
S4D_INITS = ("legs", "lin", "inv", "real")


def s4d_diagonal(init: S4DInit, d_state: int) -> np.ndarray:
    """Initial diagonal A of S4D, one of each conjugate pair.

    legs: eigenvalues of the normal part of HiPPO-LegS;  lin: -1/2 + iπk;
    inv: -1/2 + i n/π (n/(2k+1) - 1);  real: -(k+1).

    Returns:
      (d_state // 2,) complex128.
    """
    k = np.arange(d_state // 2)
    if init == "legs":
        return legs_diagonal(d_state)
    if init == "lin":
        return -0.5 + 1j * np.pi * k
    if init == "inv":
        return -0.5 + 1j * d_state / np.pi * (d_state / (2 * k + 1) - 1)
    if init == "real":
        return -(k + 1.0) + 0j
    raise ValueError(f"unknown S4D init {init!r}; valid: {', '.join(S4D_INITS)}")


def log_uniform(key, shape, low: float, high: float):
    """Samples log-uniform in [low, high] (Δ of S4D and Mamba), float32."""
    u = jax.random.uniform(key, shape)
    return jnp.exp(u * (np.log(high) - np.log(low)) + np.log(low))


def inverse_softplus(y):
    """x with softplus(x) = y, for y > 0."""
    return y + jnp.log(-jnp.expm1(-y))


# PyTorch's nn.Linear default (kaiming_uniform with a=√5): uniform in ±1/√fan_in, as the Mamba
# reference code initializes its projections.
torch_linear_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
