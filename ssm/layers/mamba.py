"""Mamba: the selective state-space block ("Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", Gu & Dao 2023).

x, z = in_proj(u);  x = silu(conv1d(x));  Δ, B, C = projections of x;
y = selective_scan(x, Δ, A, B, C, D) * silu(z);  out = out_proj(y).

Notation: b batch, l length, d = d_model, e = expand * d_model inner channels, n state, r dt_rank,
k = d_conv conv width.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.config import PositiveFloat, PositiveInt
from ssm.init import inverse_softplus, log_uniform, torch_linear_init
from ssm.layers.base import SequenceLayer, canonical_dtype, check_order, valid_lengths
from ssm.layers.registry import register_layer
from ssm.ops.conv import depthwise_conv, depthwise_conv_window
from ssm.ops.selective_scan import SELECTIVE_SCAN, selective_scan, selective_state_update
from ssm.params import SSMParam


class MambaCache(NamedTuple):
    """Recurrent state of one Mamba block.

    Attributes:
      conv: (b, k - 1, e) the last k - 1 conv inputs, oldest first, in the compute dtype.
      ssm: (b, e, n) float32 SSM state h.
    """

    conv: jax.Array
    ssm: jax.Array


class SelectiveSSM(nnx.Module):
    """The part of a Mamba block after the input projection: conv1d, Δ/B/C projections, scan.

    A bidirectional Mamba has two of these (one per direction) sharing the in/out projections.
    """

    def __init__(
        self, d_inner, *, d_state, d_conv, dt_rank, dt, impl, impl_options, dtype, param_dtype, rngs
    ):
        self.d_state, self.dt_rank = d_state, dt_rank
        self.impl, self.impl_options = impl, impl_options
        bound = 1.0 / math.sqrt(d_conv)  # PyTorch's Conv1d default (fan_in = k per group)
        self.conv_weight = nnx.Param(
            jax.random.uniform(rngs.params(), (d_conv, d_inner), param_dtype, -bound, bound)
        )
        self.conv_bias = nnx.Param(
            jax.random.uniform(rngs.params(), (d_inner,), param_dtype, -bound, bound)
        )
        linear = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.x_proj = nnx.Linear(
            d_inner, dt_rank + 2 * d_state, kernel_init=torch_linear_init, **linear
        )
        dt_std = dt_rank**-0.5
        self.dt_proj = nnx.Linear(
            dt_rank,
            d_inner,
            kernel_init=lambda key, shape, dtype: jax.random.uniform(
                key, shape, dtype, -dt_std, dt_std
            ),
            **linear,
        )
        dt_min, dt_max, dt_init_floor = dt
        initial_dt = log_uniform(rngs.params(), (d_inner,), dt_min, dt_max)
        self.dt_bias = SSMParam(inverse_softplus(jnp.maximum(initial_dt, dt_init_floor)))
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

    def conv_params(self, dtype):
        return self.conv_weight[...].astype(dtype), self.conv_bias[...].astype(dtype)

    def __call__(
        self, x, z, mask=None, *, state: MambaCache | None = None, reverse=False, segment_ids=None
    ):
        """Parallel mode. x, z: (b, l, e), mask: (b, l) bool, segment_ids: (b, l) ints ->
        (y (b, l, e), MambaCache).

        Δ is formed here (not by the op's dt_bias/dt_softplus) so that it can be 0 at padded
        positions: those steps are the identity on the state, so a valid position sees the
        state of the sequence without the padding. The cache is that after the last valid
        position (meaningless, but cheap, for ``reverse``). With ``segment_ids`` the conv and
        the scan restart where a packed sequence starts.
        """
        history = None if state is None else state.conv.astype(x.dtype)
        x_in = x
        weight, bias = self.conv_params(x.dtype)
        x = nnx.silu(
            depthwise_conv(
                x, weight, bias, history=history, reverse=reverse, segment_ids=segment_ids
            )
        )
        delta, B, C = self.delta_B_C(x)
        if mask is not None:
            delta = jnp.where(mask[..., None], delta, 0.0)
        y, h = selective_scan(
            x,
            delta,
            self.A(),
            B,
            C,
            self.D[...],
            z,
            h0=None if state is None else state.ssm,
            reverse=reverse,
            segment_ids=segment_ids,
            return_state=True,
            impl=self.impl,
            **dict(self.impl_options),
        )
        window = depthwise_conv_window(
            x_in,
            self.conv_weight.shape[0],
            history=history,
            lengths=valid_lengths(mask),
            segment_ids=segment_ids,
        )
        return y, MambaCache(conv=window, ssm=h)

    def initial_state(self, batch_size: int, dtype) -> MambaCache:
        """Zero conv window (b, k - 1, e) and SSM state (b, e, n) float32."""
        width, d_inner = self.conv_weight.shape
        return MambaCache(
            conv=jnp.zeros((batch_size, width - 1, d_inner), dtype),
            ssm=jnp.zeros((batch_size, d_inner, self.d_state), jnp.float32),
        )

    def step(self, x_t, z_t, cache: MambaCache):
        """One causal step. x_t, z_t: (b, e) -> (y_t (b, e), cache)."""
        window = jnp.concatenate([cache.conv.astype(x_t.dtype), x_t[:, None]], axis=1)
        weight, bias = self.conv_params(x_t.dtype)
        x_conv = nnx.silu(jnp.sum(window * weight, axis=1) + bias)
        delta, B, C = self.delta_B_C(x_conv)
        y, h = selective_state_update(cache.ssm, x_conv, delta, self.A(), B, C, self.D[...], z_t)
        return y, MambaCache(conv=window[:, 1:], ssm=h)


@register_layer("mamba")
class Mamba(SequenceLayer):
    """Mamba block: in_proj -> (conv1d -> silu -> selective scan) * silu(z) -> out_proj.

    Initialization follows the paper and its code: Δ's bias is inverse-softplus of dt
    log-uniform in [dt_min, dt_max] (floored at ``dt_init_floor``), A = -exp(A_log) with S4D-real
    A_log = log(1..n), D = 1, the projections uniform in ±1/√fan_in (PyTorch's Linear). A_log, D
    and dt_bias are ``SSMParam`` (own learning rate, no weight decay, float32). The scan's math
    is float32 whatever ``dtype``.

    ``impl`` picks the selective-scan implementation (any name registered in
    ``SELECTIVE_SCAN``); ``impl_options`` are its own options (``chunk_size``).

    ``bidirectional``: a second SelectiveSSM (own conv, projections, A_log, D, dt_bias) runs
    anti-causally (reversed conv and ``reverse=True`` scan) on the same in_proj output; the two
    gated outputs are summed before out_proj. It has no recurrent state.

    Packed sequences (``segment_ids``): the conv taps and the scans of both directions restart
    at every sequence start.
    """

    output_projection = True
    packs_segments = True

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        d_state: PositiveInt = 16,
        d_conv: PositiveInt = 4,
        expand: PositiveInt = 2,
        dt_rank: PositiveInt | None = None,
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: PositiveFloat = 1e-4,
        bidirectional: bool = False,
        impl: SELECTIVE_SCAN.impl_type = "auto",
        impl_options: dict | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_order("Mamba", dt_min=dt_min, dt_max=dt_max)
        SELECTIVE_SCAN.check(impl, "Mamba impl")
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        self.d_model, self.d_output = d_model, d_model
        self.d_inner = expand * d_model
        self.bidirectional = bidirectional
        ssm_options = dict(
            d_state=d_state,
            d_conv=d_conv,
            dt_rank=dt_rank or math.ceil(d_model / 16),
            dt=(dt_min, dt_max, dt_init_floor),
            impl=impl,
            impl_options=tuple(sorted((impl_options or {}).items())),
            rngs=rngs,
        )
        dtypes = dict(dtype=self.dtype, param_dtype=param_dtype)
        self.ssm = SelectiveSSM(self.d_inner, **ssm_options, **dtypes)
        self.ssm_reverse = (
            SelectiveSSM(self.d_inner, **ssm_options, **dtypes) if bidirectional else None
        )
        linear = dict(use_bias=False, kernel_init=torch_linear_init, **dtypes, rngs=rngs)
        self.in_proj = nnx.Linear(d_model, 2 * self.d_inner, **linear)
        self.out_proj = nnx.Linear(self.d_inner, d_model, **linear)

    @property
    def recurrent(self) -> bool:
        return not self.bidirectional

    def __call__(
        self,
        x,
        mask=None,
        *,
        state: MambaCache | None = None,
        return_state=False,
        segment_ids=None,
    ):
        """Parallel mode. x: (b, l, d), mask: (b, l) bool -> y: (b, l, d); padding is zeroed.

        Padded positions neither change the state nor enter the conv window of a valid position,
        so valid outputs do not depend on what the padding holds (nor on its length for padding
        at the ends). ``state``/``return_state``: the MambaCache to start from / to return.
        ``segment_ids`` (b, l) ints: packed sequences, each run as if alone.
        """
        if state is not None or return_state:
            self.require_state("state in or out")
        dtype = self.compute_dtype(x)
        x, z = jnp.split(self.in_proj(x.astype(dtype)), 2, axis=-1)  # (b, l, e) each
        if mask is not None:  # padding never enters a valid position's conv window
            x = jnp.where(mask[..., None], x, 0)
        y, cache = self.ssm(x, z, mask, state=state, segment_ids=segment_ids)
        if self.ssm_reverse is not None:
            y = y + self.ssm_reverse(x, z, mask, reverse=True, segment_ids=segment_ids)[0]
        y = self.out_proj(y.astype(dtype))
        if mask is not None:
            y = jnp.where(mask[..., None], y, 0)
        return (y, cache) if return_state else y

    def initial_state(self, batch_size: int) -> MambaCache:
        """Zero cache: conv window (b, k - 1, e) in the compute dtype, SSM state (b, e, n) f32."""
        self.require_state("initial_state()")
        return self.ssm.initial_state(batch_size, self.dtype or self.param_dtype)

    def step(self, x_t, state: MambaCache):
        """One recurrent step. x_t: (b, d) -> (y_t (b, d), state)."""
        self.require_state("step()")
        dtype = self.compute_dtype(x_t)
        x_t, z_t = jnp.split(self.in_proj(x_t.astype(dtype)), 2, axis=-1)
        y_t, state = self.ssm.step(x_t, z_t, state)
        return self.out_proj(y_t.astype(dtype)), state
