"""DSS: diagonal state spaces ("Diagonal State Spaces are as Effective as Structured State
Spaces", Gupta, Gu & Berant 2022), after the authors' ``DSSKernel`` (github.com/ag1988/dss).

A diagonal SSM with Λ shared by the channels, one Δ per channel and C B folded into one W:
- DSS-exp: Re Λ = -exp(·) < 0, K_k = 2 Re(Σ_n W (e^{ΛΔ} - 1)/Λ e^{ΛΔk}): the ZOH kernel with
  B = 1, so the layer is S4D with B = 1 and has S4D's recurrent state and ``step()``;
- DSS-softmax: Λ unconstrained, K_k = 2 Re(Σ_n W/Λ softmax_k(ΛΔk)), the softmax over the L
  positions k of the sequence (Proposition 1). It depends on L, so it has no recurrent state.

The paper writes K = Re(w ...); W here is w / 2 (the ``2 Re`` of ``ssm.ops.kernels``), and the
paper's N counts complex modes: N = 64 is ``d_state=128``.

Notation: b batch, l length, h = d_model channels, n2 = d_state / 2 complex modes, c SSM copies
per channel.
"""

import typing
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.config import PositiveFloat, PositiveInt
from ssm.init import S4DInit, s4d_diagonal
from ssm.layers.base import EvenStateSize, canonical_dtype, check_order, valid_lengths
from ssm.layers.registry import register_layer
from ssm.layers.s4d import S4D
from ssm.ops.conv import LONG_CONV, long_conv
from ssm.ops.kernels import discretize_diagonal, vandermonde_kernel
from ssm.ops.numerics import complex_dtype
from ssm.params import SSMParam

DSSKernel = Literal["exp", "softmax"]
EPSILON = 1e-7  # bounds 1 / (Λ (e^{LΛΔ} - 1)) where it nears 0, as the authors' ``reciprocal``


def reciprocal(x, epsilon: float = EPSILON):
    """1 / x with a bounded norm: conj(x) / (|x|² + epsilon)."""
    return jnp.conj(x) / (x.real**2 + x.imag**2 + epsilon)


def softmax_kernel(A, W, log_dt, length: int, lengths=None):
    """DSS-softmax kernel K[b, c, h, k] = 2 Re(Σ_n W/Λ softmax_k(ΛΔk)), the softmax over the
    L = lengths[b] positions 0 <= k < L (the kernel is zero past them).

    Stable for any Λ and Δ: with z = ΛΔ (or -ΛΔ where Re ΛΔ > 0, counting k from L - 1 down)
    every exponent has Re <= 0, and 1 / Σ_k e^{kz} = (e^z - 1) / (e^{Lz} - 1) in closed form.

    Args:
      A: (h, n2) complex Λ.   W: (c, h, n2) complex.   log_dt: (h,) real.   length: l (static).
      lengths: optional (b,) int valid lengths <= l; None: one kernel of length l (b = 1).

    Returns:
      (b, c, h, l) float32 (float64 for complex128 inputs).
    """
    dtype = complex_dtype(A.dtype, W.dtype, log_dt.dtype)
    real = jnp.finfo(dtype).dtype
    A, W = A.astype(dtype), W.astype(dtype)
    dtA = jnp.exp(log_dt.astype(real))[:, None] * A  # (h, n2)
    growing = dtA.real > 0
    z = jnp.where(growing, -dtA, dtA)
    if lengths is None:
        lengths = jnp.full((1,), length, jnp.int32)
    L = lengths.astype(real)[:, None, None, None]  # (b, 1, 1, 1)
    coef = W * jnp.expm1(z) * reciprocal(A * jnp.expm1(z * L))  # (b, c, h, n2)
    halves = jnp.stack([jnp.where(growing, 0, coef), jnp.where(growing, coef, 0)])
    b, c, h, n2 = coef.shape
    k = vandermonde_kernel(z, jnp.ones_like(z), halves.reshape(-1, h, n2), length)
    decaying, from_end = k.reshape(2, b, c, h, length)
    steps = jnp.arange(length)
    reversed_steps = jnp.maximum(lengths[:, None] - 1 - steps, 0)[:, None, None, :]  # (b,1,1,l)
    from_end = jnp.take_along_axis(from_end, reversed_steps, axis=-1)
    valid = (steps < lengths[:, None])[:, None, None, :]
    return jnp.where(valid, decaying + from_end, 0.0)


@register_layer("dss")
class DSS(S4D):
    """Diagonal state-space layer with the DSS kernels (see the module docstring).

    ``kernel="exp"`` is S4D with B = 1 (parallel mode, state in and out and ``step()`` are
    S4D's). ``kernel="softmax"`` normalizes the kernel over each row's valid length (the mask's),
    so padding changes nothing; it has no recurrent state (``NoRecurrentState``). Λ starts at
    ``init`` (``legs``: the diagonal of HiPPO-LegS's normal part, the paper's skew-HiPPO init),
    Δ log-uniform in [dt_min, dt_max]. Bidirectional: a second kernel on the reversed sequence,
    as S4D (both count lag 0; the authors' reverse kernel starts at lag -1). Output features:
    ``channels * d_model``; ``impl`` picks the long convolution (``LONG_CONV``).
    """

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        d_state: EvenStateSize = 64,
        kernel: DSSKernel = "exp",
        init: S4DInit = "legs",
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 1e-1,
        channels: PositiveInt = 1,
        bidirectional: bool = False,
        impl: LONG_CONV.impl_type = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if kernel not in typing.get_args(DSSKernel):
            valid = ", ".join(typing.get_args(DSSKernel))
            raise ValueError(f"unknown DSS kernel {kernel!r}; valid: {valid}")
        check_order("DSS", dt_min=dt_min, dt_max=dt_max)
        LONG_CONV.check(impl, "DSS impl")
        self.d_model, self.d_state, self.channels = d_model, d_state, channels
        self.kernel_kind, self.disc = kernel, "zoh"
        self.bidirectional, self.impl = bidirectional, impl
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        self.d_output = channels * d_model
        h, n2 = d_model, d_state // 2
        copies = channels * (2 if bidirectional else 1)

        u = jax.random.uniform(rngs.params(), (h,))
        self.log_dt = SSMParam(u * (np.log(dt_max) - np.log(dt_min)) + np.log(dt_min))
        A = s4d_diagonal(init, d_state)  # (n2,), Re < 0
        if kernel == "exp":
            self.log_A_real = SSMParam(jnp.asarray(np.log(-A.real), jnp.float32))
        else:
            self.A_real = SSMParam(jnp.asarray(A.real, jnp.float32))
        self.A_imag = SSMParam(jnp.asarray(A.imag, jnp.float32))
        # The authors' w ~ CN(0, 2) (real and imaginary parts N(0, 1)); W = w / 2.
        self.W = SSMParam(jax.random.normal(rngs.params(), (copies, h, n2, 2)) * 0.5)
        self.D = nnx.Param(jax.random.normal(rngs.params(), (channels, h), self.param_dtype))

    def state_matrix(self):
        """Λ broadcast to every channel, (h, n2) complex64."""
        real = -jnp.exp(self.log_A_real[...]) if self.kernel_kind == "exp" else self.A_real[...]
        A = jax.lax.complex(real, self.A_imag[...])
        return jnp.broadcast_to(A, (self.d_model, self.d_state // 2))

    def discrete(self):
        """(log Ā, dB, W) of the ZOH-discretized SSM with B = 1: (h, n2), (h, n2), (c, h, n2)."""
        A = self.state_matrix()
        log_dA, dB = discretize_diagonal(A, jnp.ones_like(A), self.log_dt[...], "zoh")
        return log_dA, dB, jax.lax.complex(self.W[..., 0], self.W[..., 1])

    def kernel(self, length: int, lengths=None):
        """Kernel, (copies, h, l) float32; copies = channels (2x if bidirectional).

        ``lengths`` (b,): softmax only, one kernel per row normalized over its valid length,
        (b, copies, h, l).
        """
        if self.kernel_kind == "exp":
            return vandermonde_kernel(*self.discrete(), length)
        W = jax.lax.complex(self.W[..., 0], self.W[..., 1])
        k = softmax_kernel(self.state_matrix(), W, self.log_dt[...], length, lengths)
        return k[0] if lengths is None else k

    @property
    def recurrent(self) -> bool:
        return self.kernel_kind == "exp" and not self.bidirectional

    def require_state(self, what: str, reason: str | None = None) -> None:
        if self.kernel_kind == "softmax":
            reason = "(the softmax kernel is normalized over the sequence length); use kernel=exp"
        super().require_state(what, reason)

    def __call__(self, x, mask=None, *, state=None, return_state=False):
        """Parallel mode.  x: (b, l, h) -> y: (b, l, channels * h); padded positions are zeroed.

        ``state`` / ``return_state``: as S4D's (DSS-exp only).
        """
        if self.kernel_kind == "exp":
            return super().__call__(x, mask, state=state, return_state=return_state)
        if state is not None or return_state:
            self.require_state("state in or out")
        b, length, _ = x.shape
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)
        u = x.astype(jnp.float32)[:, :, None]  # (b, l, 1, h)
        lengths = valid_lengths(mask)
        k = jnp.moveaxis(self.kernel(length, lengths), -1, -3)  # ([b,] l, copies, h)
        c = self.channels

        def convolve(u_row, k_row):  # (l, 1, h), (l, copies, h) -> (l, c, h)
            k_reverse = k_row[:, c:] if self.bidirectional else None
            return long_conv(u_row[None], k_row[:, :c], k_reverse, impl=self.impl)[0]

        y = jax.vmap(convolve, in_axes=(0, None if lengths is None else 0))(u, k)
        y = y + self.D[...].astype(jnp.float32) * u  # (b, l, c, h)
        if mask is not None:
            y = jnp.where(mask[..., None, None], y, 0)
        return y.reshape(b, length, self.d_output).astype(self.compute_dtype(x))
