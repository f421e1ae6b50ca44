"""S4: the diagonal-plus-low-rank state-space layer ("Efficiently Modeling Long Sequences with
Structured State Spaces"), A = Λ − P Pᴴ initialized from a HiPPO matrix, bilinear steps.

Notation: b batch, l length, h = d_model channels, n2 = d_state / 2 stored state dims (the
conjugate half is implicit), r the rank of P, c SSM copies per channel. The kernel comes from
``ssm.ops.dplr.dplr_kernel`` (Cauchy products at the roots of unity, exact for every length);
``step`` uses the same discretization without forming Ā (``ssm.ops.dplr.dplr_step``).
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.config import PositiveFloat, PositiveInt
from ssm.hippo import nplr
from ssm.layers.base import EvenStateSize, SequenceLayer, canonical_dtype, check_order
from ssm.layers.registry import register_layer
from ssm.ops.cauchy import CAUCHY
from ssm.ops.conv import long_conv
from ssm.ops.dplr import (
    dplr_apply_A,
    dplr_kernel,
    dplr_step,
    dplr_step_matrices,
    full,
)
from ssm.params import SSMParam

S4Init = Literal["legs", "legt", "lagt", "fout"]


def _pairs(z) -> jnp.ndarray:
    """A complex array as a float32 array with a trailing (real, imag) axis."""
    z = np.asarray(z)
    return jnp.asarray(np.stack([z.real, z.imag], -1), jnp.float32)


def _complex(p):
    return jax.lax.complex(p[..., 0], p[..., 1])


@register_layer("s4")
class S4(SequenceLayer):
    """DPLR SSM layer: parallel mode by the S4 kernel + long convolution, recurrent ``step()``.

    Λ, P, B (shared by the c copies) and C are complex SSM parameters; Re Λ is stored as
    log(−Re Λ) when ``real="exp"`` (Re Λ < 0 always, so with Q = P the matrix A = Λ − P Pᴴ is
    Hurwitz: the "stable" S4 that SaShiMi generates with) and raw when ``real="none"`` (the
    original S4). ``rank`` is raised to the rank the HiPPO measure needs (LegT 2, the others 1).
    ``impl`` picks the Cauchy implementation (``ssm.ops.cauchy.CAUCHY``). Kernel math is complex64
    whatever ``dtype``. The state is (b, h, n2) complex64; a bidirectional S4 has none.
    """

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        d_state: EvenStateSize = 64,
        rank: PositiveInt = 1,
        init: S4Init = "legs",
        real: Literal["exp", "none"] = "exp",
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 1e-1,
        channels: PositiveInt = 1,
        bidirectional: bool = False,
        impl: CAUCHY.impl_type = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_order("S4", dt_min=dt_min, dt_max=dt_max)
        if real not in ("exp", "none"):
            raise ValueError(f"S4 real={real!r} is not valid; valid: 'exp', 'none'")
        CAUCHY.check(impl, "S4 impl")
        self.d_model, self.d_state, self.channels = d_model, d_state, channels
        self.real, self.bidirectional, self.impl = real, bidirectional, impl
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        self.d_output = channels * d_model
        h, n2 = d_model, d_state // 2
        copies = channels * (2 if bidirectional else 1)

        Lambda, P, B, _ = nplr(init, d_state, rank, b_clip=2.0)  # (n2,), (r, n2), (n2,): S4's clip
        self.rank = P.shape[0]
        u = jax.random.uniform(rngs.params(), (h,))
        self.log_dt = SSMParam(u * (np.log(dt_max) - np.log(dt_min)) + np.log(dt_min))
        re = np.broadcast_to(np.minimum(Lambda.real, -1e-4), (h, n2))  # as S4: LegT's are 0
        self.A_real = SSMParam(jnp.asarray(np.log(-re) if real == "exp" else re, jnp.float32))
        self.A_imag = SSMParam(jnp.asarray(np.broadcast_to(Lambda.imag, (h, n2)), jnp.float32))
        self.P = SSMParam(_pairs(np.broadcast_to(P[:, None], (self.rank, h, n2))))
        self.B = SSMParam(_pairs(np.broadcast_to(B, (h, n2))))
        self.C = SSMParam(jax.random.normal(rngs.params(), (copies, h, n2, 2)) * np.sqrt(0.5))
        self.D = nnx.Param(jax.random.normal(rngs.params(), (channels, h), self.param_dtype))

    def parameters(self):
        """(Λ (h, n2), P (r, h, n2), B (h, n2), C (copies, h, n2)) complex64, log Δ (h,)."""
        real = -jnp.exp(self.A_real[...]) if self.real == "exp" else self.A_real[...]
        Lambda = jax.lax.complex(real, self.A_imag[...])
        P, B, C = (_complex(p[...]) for p in (self.P, self.B, self.C))
        return Lambda, P, B, C, self.log_dt[...]

    def kernel(self, length: int):
        """Kernel K_l = C Ā^l B̄, (copies, h, l) float32; copies = channels (2x if bidirectional)."""
        Lambda, P, B, C, log_dt = self.parameters()
        return dplr_kernel(Lambda, P, B, C, log_dt, length, impl=self.impl)

    @property
    def recurrent(self) -> bool:
        return not self.bidirectional

    def __call__(self, x, mask=None, *, state=None, return_state=False):
        """Parallel mode.  x: (b, l, h) -> y: (b, l, channels * h); padded positions are zeroed.

        ``state`` (b, h, n2) complex: the state before x[:, 0]; its free response C Ā^(t+1) h0
        is a kernel of its own (h0 mapped to the B with B̄ = Ā h0), computed in the same call.
        ``return_state``: also return the state after the last valid position (a sequential
        pass of ``dplr_step``: O(l·n2·r) per channel).
        """
        if state is not None or return_state:
            self.require_state("state in or out")
        b, length, h = x.shape
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)
        u = x.astype(jnp.float32)  # (b, l, h)
        Lambda, P, B, C, log_dt = self.parameters()
        Bs = B[None]
        if state is not None or return_state:  # shared by the free response and the state out
            matrices = dplr_step_matrices(Lambda, P, B, log_dt)
        if state is not None:  # B' = (1/Δ + A/2) h0, so that B̄' = Ā h0
            h0 = full(state.astype(Bs.dtype))
            B0 = h0 * matrices[3] / 2 + dplr_apply_A(matrices, h0) / 2
            Bs = jnp.concatenate([Bs, B0[..., : B.shape[-1]]], axis=0)
        kernels = dplr_kernel(Lambda, P, Bs, C, log_dt, length, impl=self.impl)
        k = jnp.moveaxis(kernels[0], -1, 0)  # (l, copies, h)
        c = self.channels
        if self.bidirectional:
            y = long_conv(u[:, :, None], k[:, :c], k[:, c:])
        else:
            y = long_conv(u[:, :, None], k)
        y = y + self.D[...].astype(jnp.float32) * u[:, :, None]  # (b, l, c, h)
        if state is not None:
            y = y + jnp.moveaxis(kernels[1:], -1, 1)  # (b, l, c, h)
        if mask is not None:
            y = jnp.where(mask[..., None, None], y, 0)
        y = y.reshape(b, length, self.d_output).astype(self.compute_dtype(x))
        if not return_state:
            return y
        return y, self._final_state(u, mask, matrices, state)

    def _final_state(self, u, mask, matrices, state):
        """The state after the last valid position, (b, h, n2), by ``dplr_step`` through u."""
        if state is None:
            state = self.initial_state(u.shape[0])
        valid = jnp.ones(u.shape[:2], bool) if mask is None else mask

        def advance(x, inputs):
            u_t, valid_t = inputs
            return jnp.where(valid_t[:, None, None], dplr_step(matrices, x, u_t), x), None

        inputs = (jnp.swapaxes(u, 0, 1), jnp.swapaxes(valid, 0, 1))
        return jax.lax.scan(advance, state.astype(jnp.complex64), inputs)[0]

    def initial_state(self, batch_size: int):
        """Zero state, (b, h, n2) complex64."""
        self.require_state("initial_state()")
        return jnp.zeros((batch_size, self.d_model, self.d_state // 2), jnp.complex64)

    def step(self, x_t, state):
        """One recurrent step. x_t: (b, h), state: (b, h, n2) -> (y_t (b, c*h), state)."""
        self.require_state("step()")
        Lambda, P, B, C, log_dt = self.parameters()
        u = x_t.astype(jnp.float32)
        state = dplr_step(dplr_step_matrices(Lambda, P, B, log_dt), state, u)
        y = 2.0 * jnp.einsum("chn,bhn->bch", C, state).real
        y = y + self.D[...].astype(jnp.float32) * u[:, None]
        return y.reshape(x_t.shape[0], self.d_output).astype(self.compute_dtype(x_t)), state
