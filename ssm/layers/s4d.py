"""S4D: diagonal state-space layer ("On the Parameterization and Initialization of Diagonal SSMs").

Notation: b batch, l length, h = d_model channels, n2 = d_state / 2 complex state dims (each is
one of a conjugate pair, hence the ``2 Re``), c SSM copies per channel.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.config import PositiveFloat, PositiveInt
from ssm.hippo import ptd_diagonal
from ssm.init import S4D_INITS, S4DInit, s4d_init
from ssm.layers.base import (
    EvenStateSize,
    SequenceLayer,
    canonical_dtype,
    check_order,
    valid_lengths,
)
from ssm.layers.registry import register_layer
from ssm.ops.conv import LONG_CONV, long_conv
from ssm.ops.kernels import diagonal_ssm_step, discretize_diagonal, vandermonde_kernel
from ssm.ops.numerics import HIGHEST
from ssm.params import SSMParam


@register_layer("s4d")
class S4D(SequenceLayer):
    """Diagonal SSM layer: parallel mode by Vandermonde kernel + long convolution, recurrent step().

    Kernel math runs in float32/complex64 whatever ``dtype``; the output is cast to the compute
    dtype. Output features: ``channels * d_model`` (the backbone's output projection mixes them).
    ``impl`` picks the long-convolution implementation (a name registered in ``LONG_CONV``).
    A and B start from ``ssm.init.s4d_init(init, d_state)`` (for a HiPPO measure, S4's derived
    B), C complex normal. ``init="ptd"`` is S4-PTD (Yu, Mahoney & Erichson 2024): HiPPO-LegS
    perturbed by ||E||₂ = ``ptd_eps`` and diagonalized (``ssm.hippo.ptd_diagonal``), B̃ = V⁻¹ B and
    C̃ = C V for a real normal C, so the initial kernel is that of HiPPO-LegS + E; it keeps the
    perturbed spectrum's real eigenvalues too, n2 = d_state/2 + (their number)/2 (34 at
    d_state 64). Its B̃ and C̃ are large and cancel (|B̃| up to ~1e5 at d_state 64, eps 0.1), so
    the float32 kernel at init is off the exact one by about 1e-5 (d_state 16) to 1e-3 (d_state
    64-128) relative; a larger ``ptd_eps`` is better conditioned. The state is (b, h, n2)
    complex64; a bidirectional S4D has none.
    """

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        d_state: EvenStateSize = 64,
        init: Literal[S4DInit, "ptd"] = "legs",
        ptd_eps: PositiveFloat = 0.1,
        disc: Literal["zoh", "bilinear"] = "zoh",
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 1e-1,
        channels: PositiveInt = 1,
        bidirectional: bool = False,
        impl: LONG_CONV.impl_type = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_order("S4D", dt_min=dt_min, dt_max=dt_max)
        if init not in (*S4D_INITS, "ptd"):
            raise ValueError(f"unknown S4D init {init!r}; valid: {', '.join(S4D_INITS)}, ptd")
        self.d_model, self.d_state, self.channels = d_model, d_state, channels
        LONG_CONV.check(impl, "S4D impl")
        self.disc, self.bidirectional, self.impl = disc, bidirectional, impl
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        self.d_output = channels * d_model
        h = d_model
        copies = channels * (2 if bidirectional else 1)

        u = jax.random.uniform(rngs.params(), (h,))
        self.log_dt = SSMParam(u * (np.log(dt_max) - np.log(dt_min)) + np.log(dt_min))
        if init == "ptd":
            A, B, W = ptd_diagonal(d_state, ptd_eps)
            C = np.asarray(jax.random.normal(rngs.params(), (copies, h, d_state)), np.float64) @ W
            C = jnp.asarray(np.stack([C.real, C.imag], -1), jnp.float32)
        else:
            A, B = s4d_init(init, d_state)
            C = jax.random.normal(rngs.params(), (copies, h, d_state // 2, 2)) * np.sqrt(0.5)
        A, B = (np.broadcast_to(v, (h, len(A))) for v in (A, B))
        self.log_A_real = SSMParam(jnp.asarray(np.log(-A.real), jnp.float32))
        self.A_imag = SSMParam(jnp.asarray(A.imag, jnp.float32))
        self.B = SSMParam(jnp.asarray(np.stack([B.real, B.imag], -1), jnp.float32))
        self.C = SSMParam(C)
        self.D = nnx.Param(jax.random.normal(rngs.params(), (channels, h), self.param_dtype))

    def discrete(self):
        """(log Ā, dB, C) of the discretized SSM: (h, n2), (h, n2) complex64, (copies, h, n2)."""
        A = -jnp.exp(self.log_A_real[...]) + 1j * self.A_imag[...]
        B = jax.lax.complex(self.B[..., 0], self.B[..., 1])
        C = jax.lax.complex(self.C[..., 0], self.C[..., 1])
        log_dA, dB = discretize_diagonal(A, B, self.log_dt[...], self.disc)
        return log_dA, dB, C

    def kernel(self, length: int):
        """Kernel, (copies, h, l) float32; copies = channels (2x if bidirectional)."""
        return vandermonde_kernel(*self.discrete(), length)

    @property
    def recurrent(self) -> bool:
        return not self.bidirectional

    def __call__(self, x, mask=None, *, state=None, return_state=False):
        """Parallel mode.  x: (b, l, h) -> y: (b, l, channels * h); padded positions are zeroed.

        ``state`` (b, h, n2) complex: the state before x[:, 0]; its free response is added.
        ``return_state``: also return the state after the last valid position.
        """
        if state is not None or return_state:
            self.require_state("state in or out")
        b, length, h = x.shape
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)
        u = x.astype(jnp.float32)  # (b, l, h)
        log_dA, dB, C = self.discrete()
        k = jnp.swapaxes(vandermonde_kernel(log_dA, dB, C, length).T, 1, 2)  # (l, copies, h)
        c = self.channels
        if self.bidirectional:
            y = long_conv(u[:, :, None], k[:, :c], k[:, c:], impl=self.impl)
        else:
            y = long_conv(u[:, :, None], k, impl=self.impl)
        y = y + self.D[...].astype(jnp.float32) * u[:, :, None]  # (b, l, c, h)
        if state is not None:  # free response: y_t += 2 Re(C Ā^(t+1) h0)
            powers = jnp.exp(log_dA[..., None] * jnp.arange(1, length + 1))  # (h, n2, l)
            y = y + 2.0 * jnp.einsum("chn,bhn,hnl->blch", C, state, powers, precision=HIGHEST).real
        if mask is not None:
            y = jnp.where(mask[..., None, None], y, 0)
        y = y.reshape(b, length, self.d_output).astype(self.compute_dtype(x))
        if not return_state:
            return y
        return y, self._final_state(u, mask, log_dA, dB, state)

    def _final_state(self, u, mask, log_dA, dB, state):
        """State after the last valid position: Ā^L h0 + sum_s Ā^(L-1-s) dB u_s, (b, h, n2).

        Rows are shifted right so their valid part ends at the last position (padded inputs are
        zero), so one Vandermonde product serves every length L of the batch.
        """
        b, length, _ = u.shape
        lengths = valid_lengths(mask)
        if lengths is None:
            lengths = jnp.full((b,), length, jnp.int32)
        else:
            source = jnp.arange(length)[None, :] - (length - lengths[:, None])  # (b, l)
            u = jnp.take_along_axis(u, jnp.maximum(source, 0)[..., None], axis=1)
            u = jnp.where((source >= 0)[..., None], u, 0.0)
        decay = jnp.exp(log_dA[..., None] * jnp.arange(length - 1, -1, -1))  # (h, n2, l)
        h = dB * jnp.einsum("blh,hnl->bhn", u.astype(decay.dtype), decay, precision=HIGHEST)
        if state is not None:
            h = h + jnp.exp(log_dA * lengths[:, None, None]) * state
        return h

    def initial_state(self, batch_size: int):
        """Zero state, (b, h, n2) complex64."""
        self.require_state("initial_state()")
        return jnp.zeros((batch_size, self.d_model, self.A_imag.shape[-1]), jnp.complex64)

    def step(self, x_t, state):
        """One recurrent step. x_t: (b, h), state: (b, h, n2) -> (y_t (b, c*h), state)."""
        self.require_state("step()")
        log_dA, dB, C = self.discrete()
        D = self.D[...].astype(jnp.float32)
        y, state = diagonal_ssm_step(state, x_t.astype(jnp.float32), jnp.exp(log_dA), dB, C, D)
        return y.reshape(x_t.shape[0], self.d_output).astype(self.compute_dtype(x_t)), state
