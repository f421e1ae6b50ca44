"""Convolutions along the length axis: FFT long convolution (a dispatch op) and the short
causal depthwise convolution of Mamba blocks.

``long_conv`` implementations registered in ``LONG_CONV`` take ``(u, k, k_reverse)`` in the
compute dtype, kernels padded or cut to the sequence length (``k_reverse`` may be None):

- ``fft``: O(l log l) by real FFTs of length 2l;
- ``reference``: the explicit O(l²) Toeplitz sum of ``ssm.ops.reference``.
"""

import jax.numpy as jnp

from ssm.ops import reference
from ssm.ops.dispatch import Op
from ssm.ops.numerics import compute_dtype

LONG_CONV = Op("long_conv", auto=lambda platform, u, *args: "fft")


@LONG_CONV.register("reference")
def _reference(u, k, k_reverse):
    if k_reverse is None:
        return reference.causal_conv(u, k)
    return reference.bidirectional_conv(u, k, k_reverse)


@LONG_CONV.register("fft")
def _fft(u, k, k_reverse):
    length = u.shape[1]
    if k_reverse is not None:
        # Circular layout of length 2l: lag j >= 0 at index j, lag -j at index 2l - j.
        k = jnp.concatenate([k, jnp.zeros_like(k[:1]), k_reverse[1:][::-1]], axis=0)
        k = k.at[0].add(k_reverse[0])
    k_f = jnp.fft.rfft(k, n=2 * length, axis=0)
    u_f = jnp.fft.rfft(u, n=2 * length, axis=1)
    return jnp.fft.irfft(u_f * k_f, n=2 * length, axis=1)[:, :length]


def long_conv(u, k, k_reverse=None, *, impl="auto"):
    """Convolve u with a kernel as long as the sequence.

    Causal: ``y[t] = sum_{s<=t} k[t-s] u[s]``. With ``k_reverse`` (bidirectional) an anticausal
    term is added: ``y[t] += sum_{s>=t} k_reverse[s-t] u[s]``, i.e. a causal convolution of the
    reversed sequence, reversed back.

    Args:
      u: (b, l, ...) input; the trailing axes broadcast against the kernel's.
      k: (l_k, ...) causal kernel, l_k <= l (shorter kernels are zero-padded, longer cut).
      k_reverse: optional (l_k, ...) anticausal kernel.
      impl: "auto" (``fft``) or a name in ``LONG_CONV``.

    Returns:
      (b, l, ...) output in float32 (float64 for float64 inputs).
    """
    length = u.shape[1]
    dtype = compute_dtype(u.dtype, k.dtype)

    def fit(kernel):  # (l_k, ...) -> (l, ...)
        kernel = kernel[:length].astype(dtype)
        return jnp.pad(kernel, [(0, length - kernel.shape[0])] + [(0, 0)] * (kernel.ndim - 1))

    k_reverse = None if k_reverse is None else fit(k_reverse)
    return LONG_CONV(impl, u.astype(dtype), fit(k), k_reverse)


def _runs(segment_ids):
    """(b, l) int32 index of each position's run of equal ids (0 for the first): two positions
    are in one packed sequence iff their runs are equal."""
    return jnp.cumsum(reference.segment_starts(segment_ids), axis=1, dtype=jnp.int32)


def depthwise_conv_window(x, width, *, history=None, lengths=None, segment_ids=None):
    """The ``history`` that continues ``depthwise_conv`` after each row's last valid input.

    Args:
      x: (b, l, e).   width: the conv width k.   history: optional (b, k - 1, e) inputs before
      x[0] (zeros if None).   lengths: optional (b,) valid lengths (right padding); None: all l.
      segment_ids: optional (b, l) ints (packed sequences): inputs of an earlier sequence than
        the last valid input's are zeroed; history belongs to the first.

    Returns:
      (b, k - 1, e): the last k - 1 valid inputs of history ‖ x.
    """
    b, length, _ = x.shape
    if history is None:
        history = jnp.zeros((b, width - 1, x.shape[2]), x.dtype)
    inputs = jnp.concatenate([history.astype(x.dtype), x], axis=1)  # (b, k - 1 + l, e)
    if lengths is None:
        lengths = jnp.full((b,), length, jnp.int32)
    index = lengths[:, None] + jnp.arange(width - 1)[None, :]  # (b, k - 1)
    window = jnp.take_along_axis(inputs, index[..., None], axis=1)
    if segment_ids is None:
        return window
    runs = jnp.take_along_axis(jnp.pad(_runs(segment_ids), [(0, 0), (width - 1, 0)]), index, 1)
    return jnp.where((runs == runs[:, -1:])[..., None], window, 0)


def depthwise_conv(x, weight, bias, *, history=None, reverse: bool = False, segment_ids=None):
    """Causal depthwise conv: y[t] = bias + sum_j weight[j] x[t - (k - 1) + j].

    The k - 1 inputs before x[0] are ``history`` (zeros if None), so a sequence can be continued.
    With ``reverse`` it is anti-causal: y[t] = bias + sum_j weight[j] x[t + (k - 1) - j].
    With ``segment_ids`` (packed sequences) a tap that reaches into another sequence than t's
    sees zero; history belongs to the first sequence of each row.

    Args:
      x: (b, l, e).   weight: (k, e).   bias: (e,).   history: optional (b, k - 1, e).
      segment_ids: optional (b, l) ints; a new sequence starts where the id changes.

    Returns:
      (b, l, e) in x.dtype.
    """
    if reverse:
        if history is not None:
            raise ValueError("depthwise_conv: history (a causal state) cannot be used with reverse")
        segment_ids = None if segment_ids is None else jnp.flip(segment_ids, 1)
        return jnp.flip(depthwise_conv(jnp.flip(x, 1), weight, bias, segment_ids=segment_ids), 1)
    width, length = weight.shape[0], x.shape[1]
    if history is None:
        padded = jnp.pad(x, [(0, 0), (width - 1, 0), (0, 0)])
    else:
        padded = jnp.concatenate([history.astype(x.dtype), x], axis=1)
    taps = [padded[:, j : j + length] for j in range(width)]  # (b, l, e) each
    if segment_ids is not None:
        runs = _runs(segment_ids)
        padded_runs = jnp.pad(runs, [(0, 0), (width - 1, 0)])  # history: run 0
        taps = [
            jnp.where((padded_runs[:, j : j + length] == runs)[..., None], tap, 0)
            for j, tap in enumerate(taps)
        ]
    y = sum(tap * weight[j] for j, tap in enumerate(taps))
    return (y + bias).astype(x.dtype)
