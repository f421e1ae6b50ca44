"""RG-LRU and Griffin's recurrent block ("Griffin: Mixing Gated Linear Recurrences with Local
Attention for Efficient Language Models", De et al. 2024), after google-deepmind/recurrentgemma.

RG-LRU, per channel (all elementwise; σ the logistic function, c = 8):

    r_t = σ(W_a x_t + b_a)                    recurrence gate
    i_t = σ(W_x x_t + b_x)                    input gate
    log a_t = -c · softplus(a_param) · r_t    i.e. a_t = a^(c r_t), a = σ(-a_param) = σ(Λ)
    h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ x_t)

The recurrent block: y = gelu(Linear_y(u)); x = RG-LRU(Conv1D(Linear_x(u)));
out = Linear_out(x ⊙ y).

Notation: b batch, l length, d = d_model, e = lru_width RG-LRU channels, h heads (diagonal
blocks of the gates), p = e / h channels per head, k = conv_width.
"""

import functools
from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssm.config import PositiveInt, Range
from ssm.init import rglru_a_param
from ssm.layers.base import SequenceLayer, canonical_dtype, check_order, valid_lengths
from ssm.layers.registry import register_layer
from ssm.ops.conv import depthwise_conv, depthwise_conv_window
from ssm.ops.linear_scan import LINEAR_SCAN, linear_scan
from ssm.params import SSMParam

C = 8.0  # the fixed scale c of log a_t
MAX_SQRT_GRADIENT = 1000.0
# recurrentgemma's initializers: lecun normal (untruncated) for the linear layers and gates, a
# 100x smaller variance for the conv; biases zero.
LINEAR_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
CONV_INIT = nnx.initializers.variance_scaling(0.01, "fan_in", "normal")


class RGLRUCache(NamedTuple):
    """Recurrent state of one recurrent block.

    Attributes:
      conv: (b, k - 1, e) the last k - 1 conv inputs, oldest first, in the compute dtype.
      rnn: (b, e) float32 RG-LRU state h.
    """

    conv: jax.Array
    rnn: jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(x, max_gradient: float):
    """√x whose derivative is clipped at ``max_gradient`` (finite at x = 0, i.e. at a_t = 1)."""
    return jnp.sqrt(x)


def _sqrt_fwd(x, max_gradient):
    return jnp.sqrt(x), x


def _sqrt_bwd(max_gradient, x, g):
    return (g * 0.5 * jax.lax.rsqrt(jnp.maximum(x, 1 / (4 * max_gradient**2))),)


sqrt_bound_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


class BlockDiagonalLinear(nnx.Module):
    """x (..., e) -> (..., e): an independent p x p linear map (with bias) per head.

    The weight (h, p, p) is initialized as recurrentgemma does: normal with variance 1/e (Flax's
    fan_in of a 3-d kernel counts every head).
    """

    def __init__(self, width: int, num_heads: int, *, param_dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        p = width // num_heads
        self.w = nnx.Param(LINEAR_INIT(rngs.params(), (num_heads, p, p), param_dtype))
        self.b = nnx.Param(jnp.zeros((num_heads, p), param_dtype))

    def __call__(self, x, dtype):
        """x (..., e) -> (..., e) in ``dtype``."""
        x = x.astype(dtype).reshape(*x.shape[:-1], self.num_heads, -1)  # (..., h, p)
        y = jnp.einsum("...hi,hij->...hj", x, self.w[...].astype(dtype)) + self.b[...].astype(dtype)
        return y.reshape(*y.shape[:-2], -1)


class RGLRUCell(nnx.Module):
    """The Real-Gated Linear Recurrent Unit: gates, a_param and the linear recurrence.

    ``a_param`` (e,) is ``SSMParam`` (float32), initialized so that a = σ(-a_param) has a²
    uniform in [min_rad², max_rad²] (recurrentgemma's ``rnn_param_init``; the paper's text says
    a^c, its code a). The gates are block-diagonal with ``num_heads`` blocks (dense for 1), their
    products in the compute dtype; everything after them is float32.

    First step: h_0 = a_0 ⊙ h0 + √(1 - a_0²) ⊙ (i_0 ⊙ x_0) with h0 the given state (zero when
    none), so a fresh sequence is the continuation of a zero state. recurrentgemma instead
    restarts at document starts (segment_pos == 0): h = i ⊙ x there, without the √ factor.
    """

    def __init__(
        self, width, *, num_heads, min_rad, max_rad, impl, impl_options, param_dtype, rngs
    ):
        self.impl, self.impl_options = impl, impl_options
        self.a_param = SSMParam(rglru_a_param(rngs.params(), (width,), min_rad, max_rad))
        gate = dict(param_dtype=param_dtype, rngs=rngs)
        self.input_gate = BlockDiagonalLinear(width, num_heads, **gate)
        self.a_gate = BlockDiagonalLinear(width, num_heads, **gate)

    def coefficients(self, x):
        """x (..., e) -> (a_t, √(1 - a_t²) ⊙ i_t ⊙ x_t), both (..., e) float32."""
        gate_x = jax.nn.sigmoid(self.input_gate(x, x.dtype).astype(jnp.float32))
        gate_a = jax.nn.sigmoid(self.a_gate(x, x.dtype).astype(jnp.float32))
        log_a = -C * gate_a * jax.nn.softplus(self.a_param[...])
        # 1 - a² = -expm1(2 log a), exact also for a near 1
        multiplier = sqrt_bound_derivative(-jnp.expm1(2 * log_a), MAX_SQRT_GRADIENT)
        return jnp.exp(log_a), multiplier * gate_x * x.astype(jnp.float32)

    def __call__(self, x, mask=None, *, h0=None, segment_ids=None):
        """x (b, l, e), mask (b, l) bool, h0 (b, e), segment_ids (b, l) ints -> (h (b, l, e), h
        after the last valid position (b, e)), float32. Padded positions are the identity
        (a = 1, b = 0); h restarts from zero where a packed sequence starts."""
        a, b = self.coefficients(x)
        if mask is not None:
            a = jnp.where(mask[..., None], a, 1.0)
            b = jnp.where(mask[..., None], b, 0.0)
        return linear_scan(
            a,
            b,
            h0=h0,
            segment_ids=segment_ids,
            return_state=True,
            impl=self.impl,
            **dict(self.impl_options),
        )

    def step(self, x_t, h):
        """x_t (b, e), h (b, e) float32 -> the next h (b, e) float32."""
        a, b = self.coefficients(x_t)
        return a * h + b


@register_layer("rglru")
class RGLRU(SequenceLayer):
    """Griffin's (and Hawk's) recurrent block around the RG-LRU.

    u (b, l, d) -> y = gelu_tanh(Linear_y(u)), x = RG-LRU(Conv1D(Linear_x(u))) -> Linear_out(x ⊙ y),
    with Linear_x, Linear_y: d -> e and Linear_out: e -> d (with biases) and a causal depthwise
    conv of width ``conv_width``. As in recurrentgemma: lecun-normal linear layers and gates, a
    conv of variance 0.01 / k, zero biases, the tanh approximation of gelu (JAX's default).

    ``lru_width`` is e (None: d_model); ``num_heads`` the number of diagonal blocks of the RG-LRU
    gates (1: dense gates), dividing e; [``min_rad``, ``max_rad``] the initial range of the base
    decay a (see ``RGLRUCell``). ``impl`` picks the linear-scan implementation (any name
    registered in ``LINEAR_SCAN``), ``impl_options`` its own options (``chunk_size``).
    The block ends with its own output projection (``output_projection``). Packed sequences
    (``segment_ids``): the conv taps and the RG-LRU restart at every sequence start.
    """

    output_projection = True
    packs_segments = True

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        lru_width: PositiveInt | None = None,
        num_heads: PositiveInt = 1,
        conv_width: PositiveInt = 4,
        min_rad: Annotated[float, Range(0, 1, min_open=True, max_open=True)] = 0.9,
        max_rad: Annotated[float, Range(0, 1, min_open=True, max_open=True)] = 0.999,
        impl: LINEAR_SCAN.impl_type = "auto",
        impl_options: dict | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        width = d_model if lru_width is None else lru_width
        if width % num_heads:
            raise ValueError(f"RGLRU num_heads must divide lru_width={width}, got {num_heads}")
        check_order("RGLRU", min_rad=min_rad, max_rad=max_rad)
        LINEAR_SCAN.check(impl, "RGLRU impl")
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        self.d_model, self.d_output, self.lru_width = d_model, d_model, width
        linear = dict(kernel_init=LINEAR_INIT, dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_y = nnx.Linear(d_model, width, **linear)
        self.linear_x = nnx.Linear(d_model, width, **linear)
        self.linear_out = nnx.Linear(width, d_model, **linear)
        self.conv_weight = nnx.Param(CONV_INIT(rngs.params(), (conv_width, width), param_dtype))
        self.conv_bias = nnx.Param(jnp.zeros((width,), param_dtype))
        self.lru = RGLRUCell(
            width,
            num_heads=num_heads,
            min_rad=min_rad,
            max_rad=max_rad,
            impl=impl,
            impl_options=tuple(sorted((impl_options or {}).items())),
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def conv_params(self, dtype):
        return self.conv_weight[...].astype(dtype), self.conv_bias[...].astype(dtype)

    def __call__(
        self,
        x,
        mask=None,
        *,
        state: RGLRUCache | None = None,
        return_state=False,
        segment_ids=None,
    ):
        """Parallel mode. x: (b, l, d), mask: (b, l) bool -> y: (b, l, d); padding is zeroed.

        Padded positions leave the RG-LRU state unchanged and never enter a valid position's conv
        window; the returned cache is that after the last valid position of each row.
        ``state``/``return_state``: the RGLRUCache to start from / to return. ``segment_ids``
        (b, l) ints: packed sequences, each run as if alone.
        """
        dtype = self.compute_dtype(x)
        x = x.astype(dtype)
        y = jax.nn.gelu(self.linear_y(x), approximate=True)  # (b, l, e)
        u = self.linear_x(x)  # (b, l, e)
        if mask is not None:
            u = jnp.where(mask[..., None], u, 0)
        history = None if state is None else state.conv.astype(dtype)
        weight, bias = self.conv_params(dtype)
        conv = depthwise_conv(u, weight, bias, history=history, segment_ids=segment_ids)
        h0 = None if state is None else state.rnn
        h, h_last = self.lru(conv, mask, h0=h0, segment_ids=segment_ids)
        out = self.linear_out(h.astype(dtype) * y)
        if mask is not None:
            out = jnp.where(mask[..., None], out, 0)
        if not return_state:
            return out
        window = depthwise_conv_window(
            u,
            self.conv_weight.shape[0],
            history=history,
            lengths=valid_lengths(mask),
            segment_ids=segment_ids,
        )
        return out, RGLRUCache(conv=window, rnn=h_last)

    def initial_state(self, batch_size: int) -> RGLRUCache:
        """Zero cache: conv window (b, k - 1, e) in the compute dtype, RG-LRU state (b, e) f32."""
        width = self.conv_weight.shape[0]
        return RGLRUCache(
            conv=jnp.zeros((batch_size, width - 1, self.lru_width), self.dtype or self.param_dtype),
            rnn=jnp.zeros((batch_size, self.lru_width), jnp.float32),
        )

    def step(self, x_t, state: RGLRUCache):
        """One recurrent step. x_t: (b, d) -> (y_t (b, d), state)."""
        dtype = self.compute_dtype(x_t)
        x_t = x_t.astype(dtype)
        y = jax.nn.gelu(self.linear_y(x_t), approximate=True)  # (b, e)
        window = jnp.concatenate([state.conv.astype(dtype), self.linear_x(x_t)[:, None]], axis=1)
        weight, bias = self.conv_params(dtype)
        conv = jnp.sum(window * weight, axis=1) + bias  # (b, e)
        h = self.lru.step(conv, state.rnn)
        out = self.linear_out(h.astype(dtype) * y)
        return out, RGLRUCache(conv=window[:, 1:], rnn=h)
