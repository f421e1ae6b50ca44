"""Diagonal SSMs: discretization, the convolution kernel (Vandermonde) and the recurrent step.

Notation: h channels (independent SSMs), n2 = n/2 complex state dims (the conjugate half is
implicit, hence the ``2 Re``), c SSM copies per channel, l length. Math is complex64
(complex128 for float64 inputs).
"""

from typing import Literal

import jax.numpy as jnp

from ssm.ops import reference
from ssm.ops.dispatch import Op
from ssm.ops.numerics import HIGHEST, complex_dtype

Discretization = Literal["zoh", "bilinear"]
DISCRETIZATIONS = ("zoh", "bilinear")

DIAGONAL_SSM_STEP = Op("diagonal_ssm_step", auto=lambda *args: "reference")
DIAGONAL_SSM_STEP.register("reference")(reference.diagonal_ssm_step)


def discretize_diagonal(A, B, log_dt, method: Discretization = "zoh"):
    """Discretize a diagonal continuous SSM x' = A x + B u with step Δ = exp(log_dt).

    Args:
      A: (h, n2) complex, Re(A) < 0.
      B: (h, n2) complex.
      log_dt: (h,) real.
      method: "zoh" (exact for piecewise-constant input) or "bilinear" (Tustin).

    Returns:
      (log_dA, dB): (h, n2) complex each; Ā = exp(log_dA), the state update is
      x_t = Ā x_{t-1} + dB u_t.
    """
    dtype = complex_dtype(A.dtype, B.dtype, log_dt.dtype)
    A, B = A.astype(dtype), B.astype(dtype)
    dt = jnp.exp(log_dt.astype(jnp.finfo(dtype).dtype))[:, None]
    dtA = dt * A
    if method == "zoh":
        return dtA, (jnp.exp(dtA) - 1.0) / A * B
    if method == "bilinear":
        return jnp.log((1.0 + dtA / 2) / (1.0 - dtA / 2)), dt * B / (1.0 - dtA / 2)
    raise ValueError(f"unknown discretization {method!r}; valid: {', '.join(DISCRETIZATIONS)}")


def vandermonde_kernel(log_dA, dB, C, length: int):
    """Kernel of a diagonal SSM by a Vandermonde product: K[c, h, l] = 2 Re(sum_n C dB Ā^l).

    Args:
      log_dA: (h, n2) complex, log of the discrete state matrix Ā.
      dB: (h, n2) complex.
      C: (c, h, n2) complex.
      length: l.

    Returns:
      (c, h, l) real kernel (float32, or float64 for complex128 inputs).
    """
    dtype = complex_dtype(log_dA.dtype, dB.dtype, C.dtype)
    steps = jnp.arange(length, dtype=jnp.finfo(dtype).dtype)
    powers = jnp.exp(log_dA.astype(dtype)[..., None] * steps)  # (h, n2, l)
    CB = C.astype(dtype) * dB  # (c, h, n2)
    return 2.0 * jnp.einsum("chn,hnl->chl", CB, powers, precision=HIGHEST).real


def diagonal_ssm_step(h, u, dA, dB, C, D, *, impl="auto"):
    """One recurrent step of a discrete diagonal SSM: h = Ā h + dB u;  y = 2 Re(C h) + D u.

    Args:
      h: (b, h, n2) complex state.   u: (b, h) real input.   dA, dB: (h, n2) complex.
      C: (c, h, n2) complex.   D: (c, h) real.   impl: "auto" or a name in ``DIAGONAL_SSM_STEP``.

    Returns:
      y: (b, c, h) real and the new (b, h, n2) state.
    """
    if h.shape != (u.shape[0], *dA.shape) or C.shape[1:] != dA.shape:
        raise ValueError(
            f"diagonal_ssm_step: want h (b, h, n2), u (b, h), dA (h, n2), C (c, h, n2); got "
            f"h {h.shape}, u {u.shape}, dA {dA.shape}, C {C.shape}"
        )
    return DIAGONAL_SSM_STEP(impl, h, u, dA, dB, C, D)
