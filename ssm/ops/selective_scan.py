"""Mamba's selective scan and its one-step update: public functions over dispatch registries.

Δ = softplus(dt + dt_bias) (each step optional);  h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t;
y_t = C_t · h_t + D x_t, times silu(z_t) when z is given. The state h is (b, d, n) float32
(float64 for float64 inputs).

``selective_scan`` forms Δ, groups B and C, flips for ``reverse``, adds D and the gate; an
implementation registered in ``SELECTIVE_SCAN`` does the rest, with the signature

    impl(x, dt, A, B, C, h0, restart, *, <options>) -> (y, h)

on compute-dtype inputs x, dt (b, l, d) with the final Δ, A (d, n), B, C (b, l, g, n), the
state h0 (b, d, n) and ``restart`` (b, l) bool (the state restarts from zero before a True
step: packed sequences; None when there are none), running forwards; y (b, l, d) = C · h only.
Implementations:

- ``reference``: step by step with ``lax.scan`` (``ssm.ops.reference``);
- ``associative``: one ``lax.associative_scan`` over the whole sequence, holds (b, l, d, n);
- ``chunked``: associative scan inside chunks of ``chunk_size`` steps and a sequential carry across
  chunks, rematerialized per chunk, so neither the forward nor the backward holds (b, l, d, n);
- ``chunked_sequential``: the same chunks, each scanned step by step: the same bounded memory with
  less arithmetic, faster where parallel steps buy nothing (on CPU 1.7 to 8 times ``chunked``).
- ``pallas``: a Pallas kernel with the state on chip and time in blocks, forward and backward
  (``ssm.ops.pallas.selective_scan``); compiled on GPUs, interpreted on CPU (for tests: slow).
"""

import functools
import math

import jax
import jax.numpy as jnp

from ssm.ops import reference
from ssm.ops.dispatch import Op
from ssm.ops.linear_scan import compose_affine
from ssm.ops.numerics import compute_dtype
from ssm.ops.pallas import selective_scan as pallas_selective_scan

SHORT_ON_CPU = 128  # on CPU the plain step-by-step scan is fastest up to this length


def _auto(platform, x, *args):
    if platform == "cpu":
        return "reference" if x.shape[1] <= SHORT_ON_CPU else "chunked_sequential"
    return "chunked"


SELECTIVE_SCAN = Op("selective_scan", auto=_auto)
SELECTIVE_STATE_UPDATE = Op("selective_state_update", auto=lambda *args, **kwargs: "reference")
SELECTIVE_STATE_UPDATE.register("reference")(reference.selective_state_update)


@SELECTIVE_SCAN.register("reference")
def _reference(x, dt, A, B, C, h0, restart):
    segment_ids = None
    if restart is not None:  # a restart at the first step is one of h0
        h0 = jnp.where(restart[:, 0, None, None], 0.0, h0)
        segment_ids = jnp.cumsum(restart, axis=1)
    return reference.selective_scan(x, dt, A, B, C, h0=h0, segment_ids=segment_ids)


def selective_scan(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    *,
    dt_bias=None,
    dt_softplus=False,
    h0=None,
    reverse=False,
    segment_ids=None,
    return_state=False,
    impl="auto",
    **options,
):
    """Selective scan (Mamba's S6): an input-dependent diagonal SSM, per channel.

    Args:
      x: (b, l, d) input.
      dt: (b, l, d) step size Δ, before ``dt_bias`` and ``dt_softplus``.
      A: (d, n) state matrix (diagonal per channel), negative real part for stability.
      B, C: (b, l, n), or (b, l, g, n) with d divisible by g; channel i uses group i // (d // g).
      D: optional (d,) skip connection.
      z: optional (b, l, d) gate: y is multiplied by silu(z).
      dt_bias: optional (d,) added to dt.
      dt_softplus: apply softplus to dt (after the bias).
      h0: optional (b, d, n) state before the first step (after the last one if ``reverse``).
      reverse: run from the end of the sequence to the start (the backward half of a
        bidirectional layer).
      segment_ids: optional (b, l) ints marking packed sequences: where a new segment starts
        (in the scan's direction) the state restarts from zero, so segments never mix.
      return_state: also return the final state, which continues the scan:
        ``scan(x[:, :k])`` then ``scan(x[:, k:], h0=state)`` equals ``scan(x)``.
      impl: "auto" (on CPU the reference up to length 128, else ``chunked_sequential``;
        ``chunked`` elsewhere) or a name in ``SELECTIVE_SCAN``.
      **options: the implementation's own options, e.g. ``chunk_size`` of the chunked ones.

    Returns:
      y: (b, l, d) in x.dtype (math in float32, or float64 for float64 inputs), and the
      (b, d, n) final state in the compute dtype if ``return_state``.
    """
    _check_shapes(x, dt, A, B, C, D, z, dt_bias, h0)
    if segment_ids is not None and segment_ids.shape != x.shape[:2]:
        raise ValueError(
            f"selective_scan: segment_ids must have shape {x.shape[:2]}, got {segment_ids.shape}"
        )
    f = compute_dtype(x.dtype, A.dtype)
    xf, dt, B, C = (a.astype(f) for a in (x, _delta(dt, dt_bias, dt_softplus, f), B, C))
    if B.ndim == 3:
        B, C = B[:, :, None], C[:, :, None]
    h = jnp.zeros((x.shape[0], *A.shape), f) if h0 is None else h0.astype(f)
    flip = (lambda a: jnp.flip(a, axis=1)) if reverse else (lambda a: a)
    restart = None if segment_ids is None else reference.segment_starts(flip(segment_ids))
    y, h = SELECTIVE_SCAN(
        impl, *map(flip, (xf, dt)), A.astype(f), *map(flip, (B, C)), h, restart, options=options
    )
    y = _skip_and_gate(flip(y), xf, D, z)
    return (y.astype(x.dtype), h) if return_state else y.astype(x.dtype)


def selective_state_update(
    h, x, dt, A, B, C, D=None, z=None, *, dt_bias=None, dt_softplus=False, impl="auto"
):
    """One step of the selective scan (one Mamba decode step).

    Args:
      h: (b, d, n) state.   x, dt, z: (b, d).   A: (d, n).   B, C: (b, n) or (b, g, n).
      D, dt_bias: optional (d,).   dt_softplus, impl: as in ``selective_scan``.

    Returns:
      y: (b, d) in x.dtype and the new state, equal to ``selective_scan`` on a length-1
      sequence with ``h0=h``.
    """
    seq = [None if a is None else a[:, None] for a in (x, dt, B, C, z)]
    _check_shapes(seq[0], seq[1], A, seq[2], seq[3], D, seq[4], dt_bias, h)
    return SELECTIVE_STATE_UPDATE(
        impl, h, x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=dt_softplus
    )


def _delta(dt, dt_bias, dt_softplus, f):
    dt = dt.astype(f)
    if dt_bias is not None:
        dt = dt + dt_bias.astype(f)
    return jax.nn.softplus(dt) if dt_softplus else dt


def _skip_and_gate(y, x, D, z):
    """y + D x, times silu(z): (b, l, d) in y's dtype."""
    if D is not None:
        y = y + D.astype(y.dtype) * x
    if z is not None:
        y = y * jax.nn.silu(z.astype(y.dtype))
    return y


def _check_shapes(x, dt, A, B, C, D, z, dt_bias, h0):
    """Raise a one-line ValueError saying which argument has a wrong shape and what is valid."""
    if x.ndim != 3:
        raise ValueError(f"selective_scan: x must be (b, l, d), got shape {x.shape}")
    b, l, d = x.shape
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (d, n) = ({d}, n), got {A.shape}")
    n = A.shape[1]
    expected = {"dt": (dt, x.shape), "z": (z, x.shape), "D": (D, (d,)), "dt_bias": (dt_bias, (d,))}
    expected["h0"] = (h0, (b, d, n))
    for name, (value, shape) in expected.items():
        if value is not None and value.shape != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {value.shape}")
    if B.shape[:2] != (b, l) or B.shape[-1] != n or B.ndim not in (3, 4):
        raise ValueError(
            f"selective_scan: B must be (b, l, n) = {(b, l, n)} or (b, l, g, n), got {B.shape}"
        )
    if B.ndim == 4 and d % B.shape[2]:
        raise ValueError(f"selective_scan: groups g={B.shape[2]} must divide d={d} (B {B.shape})")
    if C.shape != B.shape:
        raise ValueError(f"selective_scan: C must have B's shape {B.shape}, got {C.shape}")


@SELECTIVE_SCAN.register("associative")
def _scan_block(x, dt, A, B, C, h, restart):
    """Associative scan of a block of steps from state h; memory O(b·t·d·n).

    Args:
      x, dt: (b, t, d).   A: (d, n).   B, C: (b, t, g, n).   h: (b, d, n) state before the block.
      restart: (b, t) bool or None: the state restarts from zero before these steps.

    Returns:
      y: (b, t, d) (C · h only) and the (b, d, n) state after the block.
    """
    b, t, d = x.shape
    g, n = B.shape[2:]
    dA = jnp.exp(dt[..., None] * A)  # (b, t, d, n)
    if restart is not None:
        dA = jnp.where(restart[:, :, None, None], 0.0, dA)
    dBx = (dt * x).reshape(b, t, g, d // g, 1) * B[:, :, :, None, :]  # (b, t, g, d/g, n)
    dBx = dBx.reshape(b, t, d, n).at[:, 0].add(dA[:, 0] * h)
    _, hs = jax.lax.associative_scan(compose_affine, (dA, dBx), axis=1)  # (b, t, d, n)
    y = jnp.sum(hs.reshape(b, t, g, d // g, n) * C[:, :, :, None, :], axis=-1)  # not a dot: no TF32
    return y.reshape(b, t, d), hs[:, -1]


def _chunked(scan_block, x, dt, A, B, C, h, restart, chunk_size):
    """``scan_block`` inside chunks of ``chunk_size`` steps, a sequential carry across them.

    Peak memory O(b·l·d + b·chunk_size·d·n) in the forward; the backward recomputes each chunk
    and keeps only the (b, d, n) state at chunk boundaries, O(b·l·d·n / chunk_size). The tail
    is padded with Δ = 0 steps, which leave the state unchanged.
    """
    if chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    b, length, d = x.shape
    size = min(chunk_size, length)
    chunks = math.ceil(length / size)

    def to_chunks(a):  # (b, l, ...) -> (chunks, b, size, ...)
        if a is None:
            return None
        a = jnp.pad(a, [(0, 0), (0, chunks * size - length)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(b, chunks, size, *a.shape[2:]), 1, 0)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def step(h, inputs):
        x_c, dt_c, B_c, C_c, restart_c = inputs
        y_c, h = scan_block(x_c, dt_c, A, B_c, C_c, h, restart_c)
        return h, y_c

    h, y = jax.lax.scan(step, h, [to_chunks(a) for a in (x, dt, B, C, restart)])
    return jnp.moveaxis(y, 0, 1).reshape(b, chunks * size, d)[:, :length], h


@SELECTIVE_SCAN.register("chunked")
def _chunked_associative(x, dt, A, B, C, h, restart, *, chunk_size=64):
    return _chunked(_scan_block, x, dt, A, B, C, h, restart, chunk_size)


@SELECTIVE_SCAN.register("chunked_sequential")
def _chunked_sequential(x, dt, A, B, C, h, restart, *, chunk_size=64):
    return _chunked(_reference, x, dt, A, B, C, h, restart, chunk_size)


SELECTIVE_SCAN.register("pallas")(pallas_selective_scan.selective_scan)
