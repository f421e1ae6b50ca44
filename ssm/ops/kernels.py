"""SSM convolution-kernel generators.

Notation: h channels (independent SSMs), n2 = n/2 complex state dims (the conjugate half is
implicit, hence the ``2 Re``), c SSM copies per channel, l length.
"""

from typing import Literal

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # full float32 (no TF32 on GPUs): kernel math stays exact

Discretization = Literal["zoh", "bilinear"]
DISCRETIZATIONS = ("zoh", "bilinear")


def discretize_diagonal(A, B, log_dt, method: Discretization = "zoh"):
    """Discretize a diagonal continuous SSM x' = A x + B u with step Δ = exp(log_dt).

    Args:
      A: (h, n2) complex, Re(A) < 0.
      B: (h, n2) complex.
      log_dt: (h,) real.
      method: "zoh" (exact for piecewise-constant input) or "bilinear" (Tustin).

    Returns:
      (log_dA, dB): (h, n2) complex64 each; Ā = exp(log_dA), the state update is
      x_t = Ā x_{t-1} + dB u_t.
    """
    A = A.astype(jnp.complex64)
    B = B.astype(jnp.complex64)
    dt = jnp.exp(log_dt.astype(jnp.float32))[:, None]
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
      (c, h, l) float32 kernel.
    """
    powers = jnp.exp(log_dA[..., None] * jnp.arange(length, dtype=jnp.float32))  # (h, n2, l)
    CB = C.astype(jnp.complex64) * dB  # (c, h, n2)
    return 2.0 * jnp.einsum("chn,hnl->chl", CB, powers, precision=HIGHEST).real
