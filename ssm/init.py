"""Initializers of every layer in one place: S4D's diagonal A, Mamba's Δ and Linear layers."""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.hippo import MEASURES, nplr

S4DInit = Literal["legs", "legt", "lagt", "fout", "lin", "inv", "real"]
S4D_INITS = (*MEASURES, "lin", "inv", "real")


def s4d_init(init: S4DInit, d_state: int):
    """Initial diagonal (A, B) of S4D, one of each conjugate pair.

    A HiPPO measure (legs, legt, lagt, fout) gives the diagonal of the normal part of its NPLR
    form and B in that eigenbasis, as the S4 code derives its diagonal inits: (Λ, Vᴴ B) of
    ``nplr(init, d_state)`` with Im B clipped to [-2, 2] and Re Λ to <= -1e-4 (legt, lagt and
    fout have Re Λ = 0). For legs |B| is in about [0.5, 2.0]; the S4D paper's theory halves it
    for the kernel to approach S4-LegS's, the S4 code drops the 1/2 (a scale that C absorbs).
    lin: A = -1/2 + iπk;  inv: -1/2 + i n/π (n/(2k+1) - 1);  real: -(k+1);  B = 1 for these.

    Returns:
      A: (d_state // 2,) complex128, B: (d_state // 2,) complex128.
    """
    k = np.arange(d_state // 2)
    if init in MEASURES:
        A, _, B, _ = nplr(init, d_state, b_clip=2.0)
        return np.minimum(A.real, -1e-4) + 1j * A.imag, B
    if init == "lin":
        A = -0.5 + 1j * np.pi * k
    elif init == "inv":
        A = -0.5 + 1j * d_state / np.pi * (d_state / (2 * k + 1) - 1)
    elif init == "real":
        A = -(k + 1.0) + 0j
    else:
        raise ValueError(f"unknown S4D init {init!r}; valid: {', '.join(S4D_INITS)}")
    return A, np.ones(d_state // 2, np.complex128)


def s4d_diagonal(init: S4DInit, d_state: int) -> np.ndarray:
    """Initial diagonal A of S4D (``s4d_init``'s A), one of each conjugate pair.

    Returns:
      (d_state // 2,) complex128.
    """
    return s4d_init(init, d_state)[0]


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


def rglru_a_param(key, shape, min_rad: float = 0.9, max_rad: float = 0.999):
    """RG-LRU's a_param (recurrentgemma's ``rnn_param_init``), float32.

    The base decay a = exp(-softplus(a_param)) = σ(-a_param) has a² uniform in
    [min_rad², max_rad²]: a is uniform by area on the ring min_rad <= |a| <= max_rad.
    """
    u = jax.random.uniform(key, shape)
    log_a = 0.5 * jnp.log(u * (max_rad**2 - min_rad**2) + min_rad**2 + 1e-8)
    return inverse_softplus(-log_a)


def lru_ring_init(key, n: int, r_min: float, r_max: float, max_phase: float):
    """LRU's ring init (Orvieto et al. 2023, Appendix A): λ = exp(-exp(ν_log) + i exp(θ_log)).

    |λ|² is uniform in [r_min², r_max²] (λ uniform by area on the ring), its phase uniform in
    [0, max_phase]; γ = √(1 - |λ|²) normalizes the input. |λ|² and the phase are kept at least
    the smallest normal float, so r_min = 0 gives no infinite parameter.

    Returns:
      (ν_log, θ_log, γ_log), each (n,) float32.
    """
    k_radius, k_phase = jax.random.split(key)
    tiny = jnp.finfo(jnp.float32).tiny
    r2 = jax.random.uniform(k_radius, (n,)) * (r_max**2 - r_min**2) + r_min**2  # |λ|²
    r2 = jnp.maximum(r2, tiny)
    theta = jnp.maximum(max_phase * jax.random.uniform(k_phase, (n,)), tiny)
    nu = -0.5 * jnp.log(r2)  # |λ| = exp(-ν)
    return jnp.log(nu), jnp.log(theta), 0.5 * jnp.log(-jnp.expm1(-2 * nu))
