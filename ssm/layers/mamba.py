"""Mamba: the selective state-space block ("Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", Gu & Dao 2023).

x, z = in_proj(u);  x = silu(conv1d(x));  Δ, B, C = projections of x;
y = selective_scan(x, Δ, A, B, C, D) * silu(z);  out = out_proj(y).

Notation: b batch, l length, d = d_model, e = expand * d_model inner channels, n state, r dt_rank,
k = d_conv conv width.
"""

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.layers.registry import register_layer
from ssm.ops.selective_scan import selective_scan
from ssm.params import SSMParam

Impl = Literal["auto", "reference", "associative", "chunked", "chunked_sequential"]


class MambaCache(NamedTuple):
    """Recurrent state of one Mamba block.

    Attributes:
      conv: (b, k - 1, e) the last k - 1 conv inputs, oldest first, in the compute dtype.
      ssm: (b, e, n) float32 SSM state h.
    """

    conv: jax.Array
    ssm: jax.Array


def inverse_softplus(y):
    """x with softplus(x) = y, for y > 0."""
    return y + jnp.log(-jnp.expm1(-y))


def depthwise_conv(x, weight, bias, *, reverse: bool = False):
    """Causal depthwise conv: y[t] = bias + sum_j weight[j] x[t - (k - 1) + j].

    With ``reverse`` it is anti-causal: y[t] = bias + sum_j weight[j] x[t + (k - 1) - j].

    Args:
      x: (b, l, e).   weight: (k, e).   bias: (e,).

    Returns:
      (b, l, e) in x.dtype.
    """
    if reverse:
        return jnp.flip(depthwise_conv(jnp.flip(x, 1), weight, bias), 1)
    width, length = weight.shape[0], x.shape[1]
    padded = jnp.pad(x, [(0, 0), (width - 1, 0), (0, 0)])
    y = sum(padded[:, j : j + length] * weight[j] for j in range(width))
    return (y + bias).astype(x.dtype)


class SelectiveSSM(nnx.Module):
    """The part of a Mamba block after the input projection: conv1d, Δ/B/C projections, scan.

    A bidirectional Mamba has two of these (one per direction) sharing the in/out projections.
    """

    def __init__(
        self, d_inner, *, d_state, d_conv, dt_rank, dt_min, dt_max, dt_init_floor, impl, dtype, rngs
    ):
        self.d_state, self.dt_rank, self.impl, self.dtype = d_state, dt_rank, impl, dtype
        bound = 1.0 / math.sqrt(d_conv)  # PyTorch's Conv1d default (fan_in = k per group)
        self.conv_weight = nnx.Param(
            jax.random.uniform(rngs.params(), (d_conv, d_inner), minval=-bound, maxval=bound)
        )
        self.conv_bias = nnx.Param(
            jax.random.uniform(rngs.params(), (d_inner,), minval=-bound, maxval=bound)
        )
        self.x_proj = nnx.Linear(
            d_inner, dt_rank + 2 * d_state, use_bias=False, dtype=dtype, rngs=rngs
        )
        dt_std = dt_rank**-0.5
        self.dt_proj = nnx.Linear(
            dt_rank,
            d_inner,
            use_bias=False,
            kernel_init=lambda key, shape, dtype: jax.random.uniform(
                key, shape, dtype, -dt_std, dt_std
            ),
            dtype=dtype,
            rngs=rngs,
        )
        u = jax.random.uniform(rngs.params(), (d_inner,))
        dt = jnp.exp(u * (np.log(dt_max) - np.log(dt_min)) + np.log(dt_min))
        self.dt_bias = SSMParam(inverse_softplus(jnp.maximum(dt, dt_init_floor)))
        A_log = np.log(np.broadcast_to(np.arange(1.0, d_state + 1), (d_inner, d_state)))
        self.A_log = SSMParam(jnp.asarray(A_log, jnp.float32))
        self.D = SSMParam(jnp.ones((d_inner,), jnp.float32))

    def A(self):
        """(e, n) float32 state matrix, negative real: -exp(A_log)."""
        return -jnp.exp(self.A_log[...])

    def delta_B_C(self, x):
        """x (..., e) -> Δ = softplus(dt_proj(.) + dt_bias) (..., e) float32, B and C (..., n)."""
        dt, B, C = jnp.split(self.x_proj(x), [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        delta = jax.nn.softplus(self.dt_proj(dt).astype(jnp.float32) + self.dt_bias[...])
        return delta, B, C

    def __call__(self, x, z, mask=None, *, reverse: bool = False):
        """Parallel mode. x, z: (b, l, e), mask: (b, l) bool -> y: (b, l, e).

        Δ is formed here (not by the op's dt_bias/dt_softplus) so that it can be 0 at padded
        positions: those steps are the identity on the state, so a valid position sees the
        state of the sequence without the padding.
        """
        weight, bias = (
            self.conv_weight[...].astype(self.dtype),
            self.conv_bias[...].astype(self.dtype),
        )
        x = nnx.silu(depthwise_conv(x, weight, bias, reverse=reverse))
        delta, B, C = self.delta_B_C(x)
        if mask is not None:
            delta = jnp.where(mask[..., None], delta, 0.0)
        return selective_scan(
            x, delta, self.A(), B, C, self.D[...], z, reverse=reverse, impl=self.impl
        )

    def initial_state(self, batch_size: int) -> MambaCache:
        """Zero conv window (b, k - 1, e) and SSM state (b, e, n)."""
        width, d_inner = self.conv_weight.shape
        return MambaCache(
            conv=jnp.zeros((batch_size, width - 1, d_inner), self.dtype),
            ssm=jnp.zeros((batch_size, d_inner, self.d_state), jnp.float32),
        )

    def step(self, x_t, z_t, cache: MambaCache):
        """One causal step. x_t, z_t: (b, e) -> (y_t (b, e), cache)."""
        window = jnp.concatenate([cache.conv, x_t[:, None].astype(self.dtype)], axis=1)
        weight = self.conv_weight[...].astype(self.dtype)
        x_t = jnp.sum(window * weight, axis=1) + self.conv_bias[...].astype(self.dtype)
        x_t = nnx.silu(x_t)
        delta, B, C = self.delta_B_C(x_t)
        xf, B, C = (a.astype(jnp.float32) for a in (x_t, B, C))
        h = jnp.exp(delta[..., None] * self.A()) * cache.ssm + (delta * xf)[..., None] * B[:, None]
        y = jnp.sum(h * C[:, None], axis=-1) + self.D[...] * xf
        y = y * nnx.silu(z_t.astype(jnp.float32))
        return y.astype(self.dtype), MambaCache(conv=window[:, 1:], ssm=h)


@register_layer("mamba")
class Mamba(nnx.Module):
    """Mamba block: in_proj -> (conv1d -> silu -> selective scan) * silu(z) -> out_proj.

    Initialization follows the paper: Δ's bias is inverse-softplus of dt log-uniform in
    [dt_min, dt_max] (floored at ``dt_init_floor``), A = -exp(A_log) with S4D-real A_log =
    log(1..n), D = 1. A_log, D and dt_bias are ``SSMParam`` (own learning rate, no weight decay).
    Parameters are float32; ``dtype`` is the compute dtype (the scan's math is float32).

    ``bidirectional``: a second SelectiveSSM (own conv, projections, A_log, D, dt_bias) runs
    anti-causally (reversed conv and ``reverse=True`` scan) on the same in_proj output; the two
    gated outputs are summed before out_proj. It has no recurrent ``step``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bidirectional: bool = False,
        impl: Impl = "auto",
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        for name, value in dict(d_state=d_state, d_conv=d_conv, expand=expand).items():
            if value < 1:
                raise ValueError(f"Mamba {name} must be >= 1, got {value}")
        if dt_rank is not None and dt_rank < 1:
            raise ValueError(
                f"Mamba dt_rank must be >= 1 or null (ceil(d_model / 16)), got {dt_rank}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(
                f"Mamba needs 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}"
            )
        self.d_model, self.d_output, self.dtype = d_model, d_model, dtype
        self.d_inner = expand * d_model
        self.bidirectional = bidirectional
        ssm_options = dict(
            d_state=d_state,
            d_conv=d_conv,
            dt_rank=dt_rank or math.ceil(d_model / 16),
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init_floor=dt_init_floor,
            impl=impl,
            dtype=dtype,
            rngs=rngs,
        )
        self.in_proj = nnx.Linear(d_model, 2 * self.d_inner, use_bias=False, dtype=dtype, rngs=rngs)
        self.ssm = SelectiveSSM(self.d_inner, **ssm_options)
        self.ssm_reverse = SelectiveSSM(self.d_inner, **ssm_options) if bidirectional else None
        self.out_proj = nnx.Linear(self.d_inner, d_model, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask=None):
        """Parallel mode. x: (b, l, d), mask: (b, l) bool -> y: (b, l, d); padding is zeroed.

        Padded positions neither change the state nor enter the conv window of a valid position,
        so valid outputs do not depend on what the padding holds (nor on its length for padding
        at the ends).
        """
        x, z = jnp.split(self.in_proj(x), 2, axis=-1)  # (b, l, e) each
        if mask is not None:  # padding never enters a valid position's conv window
            x = jnp.where(mask[..., None], x, 0)
        y = self.ssm(x, z, mask)
        if self.ssm_reverse is not None:
            y = y + self.ssm_reverse(x, z, mask, reverse=True)
        y = self.out_proj(y)
        if mask is not None:
            y = jnp.where(mask[..., None], y, 0)
        return y

    def initial_state(self, batch_size: int) -> MambaCache:
        """Zero cache: conv window (b, k - 1, e) and SSM state (b, e, n) float32."""
        return self.ssm.initial_state(batch_size)

    def step(self, x_t, state: MambaCache):
        """One recurrent step. x_t: (b, d) -> (y_t (b, d), state)."""
        if self.bidirectional:
            raise ValueError(
                "a bidirectional Mamba has no recurrent step(); use bidirectional=False"
            )
        x_t, z_t = jnp.split(self.in_proj(x_t), 2, axis=-1)
        y_t, state = self.ssm.step(x_t, z_t, state)
        return self.out_proj(y_t), state
