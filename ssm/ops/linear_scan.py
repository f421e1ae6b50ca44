"""The linear recurrence h_t = a_t ⊙ h_{t-1} + b_t (LRU, S5, RG-LRU, diagonal SSMs).

``linear_scan`` flips for ``reverse`` and folds ``segment_ids`` into a (a = 0 where a segment
starts, so the state restarts there); an implementation registered in ``LINEAR_SCAN`` does the
rest, with the signature

    impl(a, b, h0, *, <options>) -> (h, h_last)

on compute-dtype a, b, h0, running forwards: a is (b, l, ...) like b, or b.shape[2:] when it is
the same at every step and row; h (b, l, ...) every state, h_last (b, ...) the last.
Implementations:

- ``reference``: step by step with ``lax.scan`` (``ssm.ops.reference``);
- ``associative``: one ``lax.associative_scan`` over the whole sequence;
- ``chunked``: associative scans inside chunks of ``chunk_size`` steps and a sequential carry
  across chunks, rematerialized per chunk: the backward keeps only chunk-boundary states;
- ``pallas``: a Pallas kernel stepping blocks of T steps in registers, real or complex, whose
  backward is the same kernel on reversed time (``ssm.ops.pallas.linear_scan``); interpreted
  on CPU.

Complex a and b stay complex: XLA multiplies and adds complex64 natively on CPU, GPU and TPU,
so splitting into real pairs would only add code (and a 4-multiply complex product is what XLA
emits anyway). The state is float32 or complex64 (64-bit for 64-bit inputs) whatever the input
dtype; the returned states h are cast back to the inputs' dtype, the final state is not.
"""

import functools
import math

import jax
import jax.numpy as jnp

from ssm.ops import reference
from ssm.ops.dispatch import Op
from ssm.ops.numerics import compute_dtype
from ssm.ops.pallas import linear_scan as pallas_linear_scan


def _auto(platform, a, b, h0):
    return "reference" if platform == "cpu" else "associative"


LINEAR_SCAN = Op("linear_scan", auto=_auto)


def compose_affine(left, right):
    """Compose two elementwise affine maps h -> a h + b (``left`` applied first)."""
    a_left, b_left = left
    a_right, b_right = right
    return a_left * a_right, a_right * b_left + b_right


@LINEAR_SCAN.register("reference")
def _reference(a, b, h0):
    return reference.linear_scan(a, b, h0=h0)


@LINEAR_SCAN.register("associative")
def _associative(a, b, h0):
    a = jnp.broadcast_to(a, b.shape)
    b = b.at[:, 0].add(a[:, 0] * h0)
    _, h = jax.lax.associative_scan(compose_affine, (a, b), axis=1)
    return h, h[:, -1]


LINEAR_SCAN.register("pallas")(pallas_linear_scan.linear_scan)


@LINEAR_SCAN.register("chunked")
def _chunked(a, b, h0, *, chunk_size=256):
    """Peak memory O(b·chunk_size·d) of scan temporaries; the tail is padded with a = 1, b = 0
    (a shared a is then broadcast over time)."""
    if chunk_size < 1:
        raise ValueError(f"linear_scan: chunk_size must be >= 1, got {chunk_size}")
    batch, length = b.shape[:2]
    size = min(chunk_size, length)
    chunks = math.ceil(length / size)
    pad = [(0, 0), (0, chunks * size - length)] + [(0, 0)] * (b.ndim - 2)

    def to_chunks(v):  # (b, l, ...) -> (chunks, b, size, ...)
        return jnp.moveaxis(v.reshape(batch, chunks, size, *v.shape[2:]), 1, 0)

    shared = a.ndim < b.ndim and chunks * size == length  # a shared a cannot pad the tail
    a = a if shared else jnp.broadcast_to(a, b.shape)
    xs = to_chunks(jnp.pad(b, pad))
    if not shared:
        xs = (to_chunks(jnp.pad(a, pad, constant_values=1)), xs)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def step(h, inputs):
        a_c, b_c = (a, inputs) if shared else inputs
        h_c, h = _associative(a_c, b_c, h)
        return h, h_c

    h, hs = jax.lax.scan(step, h0, xs)
    return jnp.moveaxis(hs, 0, 1).reshape(batch, chunks * size, *b.shape[2:])[:, :length], h


def linear_scan(
    a,
    b,
    *,
    h0=None,
    reverse=False,
    segment_ids=None,
    return_state=False,
    impl="auto",
    **options,
):
    """The linear recurrence h_t = a_t ⊙ h_{t-1} + b_t over the time axis 1.

    Args:
      a: (b, l, ...) with b's shape (time-varying), or b.shape[2:] (shared by every step and
        row); real or complex.
      b: (b, l, ...) real or complex.
      h0: optional (b, ...) state before the first step (after the last one if ``reverse``).
      reverse: run from the end of the sequence to the start.
      segment_ids: optional (b, l) ints marking packed sequences: where a new segment starts
        (in the scan's direction) the state restarts from zero, h_t = b_t.
      return_state: also return the final state, which continues the scan:
        ``scan(a[:, :k], b[:, :k])`` then ``scan(a[:, k:], b[:, k:], h0=state)`` equals the whole.
      impl: "auto" (``reference`` on CPU, ``associative`` elsewhere) or a name in
        ``LINEAR_SCAN``.
      **options: the implementation's own options, e.g. ``chunk_size`` of ``chunked``.

    Returns:
      h: (b, l, ...) every state, in the inputs' result dtype; and, if ``return_state``, the
      final (b, ...) state in the compute dtype (float32 / complex64, or 64-bit).
    """
    _check_shapes(a, b, h0, segment_ids)
    out_dtype = jnp.result_type(a.dtype, b.dtype)
    f = jnp.result_type(compute_dtype(a.dtype, b.dtype), a.dtype, b.dtype)
    a, b = a.astype(f), b.astype(f)
    h = jnp.zeros((b.shape[0], *b.shape[2:]), f) if h0 is None else h0.astype(f)
    if reverse:
        b = jnp.flip(b, axis=1)
        a = a if a.ndim < b.ndim else jnp.flip(a, axis=1)
        segment_ids = None if segment_ids is None else jnp.flip(segment_ids, axis=1)
    if segment_ids is not None:
        restart = reference.segment_starts(segment_ids)
        restart = restart.reshape(restart.shape + (1,) * (b.ndim - 2))
        a = jnp.where(restart, jnp.zeros((), f), jnp.broadcast_to(a, b.shape))
    hs, h = LINEAR_SCAN(impl, a, b, h, options=options)
    if reverse:
        hs = jnp.flip(hs, axis=1)
    hs = hs.astype(out_dtype)
    return (hs, h) if return_state else hs


def _check_shapes(a, b, h0, segment_ids):
    """Raise a one-line ValueError saying which argument has a wrong shape and what is valid."""
    if b.ndim < 2:
        raise ValueError(f"linear_scan: b must be (b, l, ...), got shape {b.shape}")
    if a.shape not in (b.shape, b.shape[2:]):
        raise ValueError(
            f"linear_scan: a must have b's shape {b.shape} or the per-step shape {b.shape[2:]}, "
            f"got {a.shape}"
        )
    state = (b.shape[0], *b.shape[2:])
    if h0 is not None and h0.shape != state:
        raise ValueError(f"linear_scan: h0 must have shape {state}, got {h0.shape}")
    if segment_ids is not None and segment_ids.shape != b.shape[:2]:
        raise ValueError(
            f"linear_scan: segment_ids must have shape {b.shape[:2]}, got {segment_ids.shape}"
        )
