"""Mamba-2: the SSD block ("Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", Dao & Gu 2024).

z, xBC, dt = in_proj(u);  x, B, C = silu(conv1d(xBC));  Δ = softplus(dt + dt_bias);
y = ssd(x, Δ, A, B, C, D);  out = out_proj(RMSNorm(y · silu(z)))  (the norm per group).

Notation: b batch, l length, d = d_model, e = expand * d_model inner channels, h = e / headdim
heads of p = headdim channels, g groups of B and C, n state, k = d_conv conv width,
c = e + 2 g n conv channels (x, B and C share one conv).
"""

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssm.config import PositiveFloat, PositiveInt
from ssm.init import inverse_softplus, log_uniform, torch_linear_init
from ssm.layers.base import SequenceLayer, canonical_dtype, check_order, valid_lengths
from ssm.layers.registry import register_layer
from ssm.ops.conv import depthwise_conv, depthwise_conv_window
from ssm.ops.ssd import SSD, ssd, ssd_state_update
from ssm.params import SSMParam

NORM_EPS = 1e-5  # the gated RMSNorm's epsilon, as in mamba_ssm


class Mamba2Cache(NamedTuple):
    """Recurrent state of one Mamba-2 block.

    Attributes:
      conv: (b, k - 1, c) the last k - 1 conv inputs (x, B, C), oldest first, compute dtype.
      ssm: (b, h, p, n) float32 SSD state.
    """

    conv: jax.Array
    ssm: jax.Array


@register_layer("mamba2")
class Mamba2(SequenceLayer):
    """Mamba-2 block: in_proj -> (z, conv1d(x, B, C) -> silu, dt) -> SSD -> gated RMSNorm ->
    out_proj.

    Initialization follows the authors' ``Mamba2``: Δ's per-head bias is inverse-softplus of dt
    log-uniform in [dt_min, dt_max] (floored at ``dt_init_floor``), A = -exp(A_log) with A
    uniform in ``A_init_range`` per head, D = 1 per head, the norm weight 1, the projections
    and the conv uniform in ±1/√fan_in (PyTorch's defaults). A_log, dt_bias and D are
    ``SSMParam`` (own learning rate, no weight decay, float32). The SSD math and the norm are
    float32 whatever ``dtype``.

    ``impl`` picks the SSD implementation (a name registered in ``SSD``); ``chunk_size`` goes to
    an implementation that takes one (``chunked``), ``impl_options`` are its other options.
    Always causal, so it always has a recurrent state. Packed sequences (``segment_ids``): the
    conv taps and the SSD restart at every sequence start.
    """

    output_projection = True
    packs_segments = True

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        d_state: PositiveInt = 128,
        d_conv: PositiveInt = 4,
        expand: PositiveInt = 2,
        headdim: PositiveInt = 64,
        ngroups: PositiveInt = 1,
        A_init_range: tuple[PositiveFloat, PositiveFloat] = (1.0, 16.0),
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: PositiveFloat = 1e-4,
        chunk_size: PositiveInt = 256,
        impl: SSD.impl_type = "auto",
        impl_options: dict | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(
                f"Mamba2 headdim={headdim} must divide d_inner = expand * d_model = {d_inner}"
            )
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(
                f"Mamba2 ngroups={ngroups} must divide nheads = d_inner / headdim = {nheads}"
            )
        low, high = A_init_range
        if low > high:
            raise ValueError(
                f"Mamba2 needs A_init_range (low, high) with low <= high, got {A_init_range}"
            )
        check_order("Mamba2", dt_min=dt_min, dt_max=dt_max)
        SSD.check(impl, "Mamba2 impl")
        if "chunk_size" in (impl_options or {}):
            raise ValueError("Mamba2: set layer.chunk_size, not impl_options.chunk_size")
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        self.d_model, self.d_output = d_model, d_model
        self.d_inner, self.d_state, self.headdim = d_inner, d_state, headdim
        self.nheads, self.ngroups, self.chunk_size = nheads, ngroups, chunk_size
        self.impl, self.impl_options = impl, tuple(sorted((impl_options or {}).items()))
        conv_dim = d_inner + 2 * ngroups * d_state
        linear = dict(
            use_bias=False,
            kernel_init=torch_linear_init,
            dtype=self.dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.in_proj = nnx.Linear(d_model, d_inner + conv_dim + nheads, **linear)  # z, xBC, dt
        bound = d_conv**-0.5  # PyTorch's Conv1d default (fan_in = k per group)
        self.conv_weight = nnx.Param(
            jax.random.uniform(rngs.params(), (d_conv, conv_dim), param_dtype, -bound, bound)
        )
        self.conv_bias = nnx.Param(
            jax.random.uniform(rngs.params(), (conv_dim,), param_dtype, -bound, bound)
        )
        initial_dt = log_uniform(rngs.params(), (nheads,), dt_min, dt_max)
        self.dt_bias = SSMParam(inverse_softplus(jnp.maximum(initial_dt, dt_init_floor)))
        A = jax.random.uniform(rngs.params(), (nheads,), jnp.float32, low, high)
        self.A_log = SSMParam(jnp.log(A))
        self.D = SSMParam(jnp.ones((nheads,), jnp.float32))
        self.norm_weight = nnx.Param(jnp.ones((d_inner,), param_dtype))
        self.out_proj = nnx.Linear(d_inner, d_model, **linear)

    def A(self):
        """(h,) float32 decay rates, negative: -exp(A_log)."""
        return -jnp.exp(self.A_log[...])

    def _split_projection(self, u):
        """u (..., d) -> z (..., e), xBC (..., c), dt (..., h) in u's compute dtype."""
        conv_dim = self.conv_weight.shape[1]
        return jnp.split(self.in_proj(u), [self.d_inner, self.d_inner + conv_dim], axis=-1)

    def _heads(self, xBC, dt):
        """Conv output xBC (..., c) and dt (..., h) -> x (..., h, p), Δ (..., h), B, C (..., g, n),
        all float32."""
        x, B, C = jnp.split(
            xBC.astype(jnp.float32), [self.d_inner, self.d_inner + self.ngroups * self.d_state], -1
        )
        lead = x.shape[:-1]
        delta = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...])
        groups = (*lead, self.ngroups, self.d_state)
        return (
            x.reshape(*lead, self.nheads, self.headdim),
            delta,
            B.reshape(groups),
            C.reshape(groups),
        )

    def _gated_norm(self, y, z, dtype):
        """RMSNorm(y · silu(z)) per group of e / g channels, times the norm weight: (..., e)."""
        g = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
        grouped = g.reshape(*g.shape[:-1], self.ngroups, -1)
        grouped = grouped * jax.lax.rsqrt(jnp.mean(grouped**2, axis=-1, keepdims=True) + NORM_EPS)
        return (grouped.reshape(g.shape) * self.norm_weight[...].astype(jnp.float32)).astype(dtype)

    def _ssd_options(self, x):
        """``impl_options``, with ``chunk_size`` if the implementation that serves x takes it."""
        name = SSD.auto(jax.default_backend(), x) if self.impl == "auto" else self.impl
        options = dict(self.impl_options)
        if "chunk_size" in inspect.signature(SSD.get(name)).parameters:
            options["chunk_size"] = self.chunk_size
        return options

    def __call__(
        self,
        x,
        mask=None,
        *,
        state: Mamba2Cache | None = None,
        return_state=False,
        segment_ids=None,
    ):
        """Parallel mode. x: (b, l, d), mask: (b, l) bool -> y: (b, l, d); padding is zeroed.

        Padded positions enter no valid position's conv window and have Δ = 0 (the identity on
        the state), so valid outputs and the returned state (after the last valid position)
        do not depend on the padding. ``state``/``return_state``: the Mamba2Cache to start
        from / to return. ``segment_ids`` (b, l) ints: packed sequences, each run as if alone.
        """
        dtype = self.compute_dtype(x)
        b, length, _ = x.shape
        z, xBC, dt = self._split_projection(x.astype(dtype))
        if mask is not None:
            xBC = jnp.where(mask[..., None], xBC, 0)
        history = None if state is None else state.conv.astype(dtype)
        weight, bias = self.conv_weight[...].astype(dtype), self.conv_bias[...].astype(dtype)
        conv = depthwise_conv(xBC, weight, bias, history=history, segment_ids=segment_ids)
        u, delta, B, C = self._heads(nnx.silu(conv), dt)
        if mask is not None:
            delta = jnp.where(mask[..., None], delta, 0.0)
        y, h = ssd(
            u,
            delta,
            self.A(),
            B,
            C,
            self.D[...],
            h0=None if state is None else state.ssm,
            segment_ids=segment_ids,
            return_state=True,
            impl=self.impl,
            **self._ssd_options(u),
        )
        y = self.out_proj(self._gated_norm(y.reshape(b, length, self.d_inner), z, dtype))
        if mask is not None:
            y = jnp.where(mask[..., None], y, 0)
        if not return_state:
            return y
        window = depthwise_conv_window(
            xBC,
            self.conv_weight.shape[0],
            history=history,
            lengths=valid_lengths(mask),
            segment_ids=segment_ids,
        )
        return y, Mamba2Cache(conv=window, ssm=h)

    def initial_state(self, batch_size: int) -> Mamba2Cache:
        """Zero cache: conv window (b, k - 1, c) in the compute dtype, state (b, h, p, n) f32."""
        width, conv_dim = self.conv_weight.shape
        return Mamba2Cache(
            conv=jnp.zeros((batch_size, width - 1, conv_dim), self.dtype or self.param_dtype),
            ssm=jnp.zeros((batch_size, self.nheads, self.headdim, self.d_state), jnp.float32),
        )

    def step(self, x_t, state: Mamba2Cache):
        """One recurrent step. x_t: (b, d) -> (y_t (b, d), state)."""
        dtype = self.compute_dtype(x_t)
        z, xBC, dt = self._split_projection(x_t.astype(dtype))
        window = jnp.concatenate([state.conv.astype(dtype), xBC[:, None]], axis=1)  # (b, k, c)
        weight, bias = self.conv_weight[...].astype(dtype), self.conv_bias[...].astype(dtype)
        u, delta, B, C = self._heads(nnx.silu(jnp.sum(window * weight, axis=1) + bias), dt)
        y, h = ssd_state_update(state.ssm, u, delta, self.A(), B, C, self.D[...])
        y = self.out_proj(self._gated_norm(y.reshape(x_t.shape[0], self.d_inner), z, dtype))
        return y, Mamba2Cache(conv=window[:, 1:], ssm=h)
