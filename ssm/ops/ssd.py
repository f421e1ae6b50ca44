"""Mamba-2's state-space duality (SSD): a selective SSM with a scalar A per head.

Notation: b batch, l length, h heads, p head dim, g groups of B and C (head i uses group
i // (h // g)), n state. Δ = softplus(dt + dt_bias) (each step optional), per head;

    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t   (state (p, n) per head);   y_t = h_t C_t + D x_t,

times silu(z_t) when z is given. The state is (b, h, p, n) float32 (float64 for float64 inputs).

``ssd`` forms Δ, folds ``segment_ids`` into restarts and flips nothing (SSD is causal); an
implementation registered in ``SSD`` does the rest, with the signature

    impl(x, dt, A, B, C, h0, restart, *, <options>) -> (y, h)

on compute-dtype x (b, l, h, p), Δ (b, l, h), A (h,), B, C (b, l, g, n), h0 (b, h, p, n) and
``restart`` (b, l) bool or None (the state restarts from zero before a True step); y = h C only.
Implementations:

- ``reference``: step by step, the selective scan's reference on h·p channels;
- ``quadratic``: the masked "attention" form y = (L ∘ C Bᵀ) (Δ x), O(l²), a second reference;
- ``chunked``: the four-step SSD algorithm: the quadratic form inside chunks of ``chunk_size``,
  each chunk's final state, a recurrence over chunk states, and the states' outputs;
- ``pallas``: a Pallas kernel, one program per (row, head) carrying its state over chunks of
  matmuls, forward and backward (``ssm.ops.pallas.ssd``); interpreted on CPU.

Decays exp(Σ Δ A) over a span are formed from segment sums (a cumulative sum of the masked
per-step log-decays, never the difference of two large cumulative sums), so they stay exact for
long chunks; spans crossing a segment start get decay 0.
"""

import jax
import jax.numpy as jnp

from ssm.ops import reference
from ssm.ops.dispatch import Op
from ssm.ops.numerics import HIGHEST, compute_dtype
from ssm.ops.pallas import ssd as pallas_ssd
from ssm.ops.selective_scan import _delta, _skip_and_gate

SHORT = 64  # up to this length the quadratic form is the cheapest exact one


def _auto(platform, x, *args):
    return "quadratic" if x.shape[1] <= SHORT else "chunked"


SSD = Op("ssd", auto=_auto)


@SSD.register("reference")
def _reference(x, dt, A, B, C, h0, restart):
    b, length, heads, p = x.shape
    n = B.shape[-1]
    segment_ids = None
    if restart is not None:  # a restart at the first step is one of h0
        h0 = jnp.where(restart[:, 0, None, None, None], 0.0, h0)
        segment_ids = jnp.cumsum(restart, axis=1)
    y, h = reference.selective_scan(
        x.reshape(b, length, heads * p),
        jnp.repeat(dt, p, axis=-1),
        jnp.broadcast_to(jnp.repeat(A, p)[:, None], (heads * p, n)),
        B,
        C,
        h0=h0.reshape(b, heads * p, n),
        segment_ids=segment_ids,
    )
    return y.reshape(x.shape), h.reshape(h0.shape)


def segment_sum(log_a, restart):
    """Log-decays over every span: out[..., i, j] = Σ_{j < k <= i} log_a[k] for j <= i, and -inf
    above the diagonal or where a restart lies in (j, i].

    Args:
      log_a: (..., t) per-step log-decays.   restart: (..., t) bool or None.

    Returns:
      (..., t, t) float, computed as a cumulative sum of masked steps (no large differences).
    """
    t = log_a.shape[-1]
    strictly_below = jnp.tril(jnp.ones((t, t), bool), -1)  # [k, j]: k > j
    steps = jnp.where(strictly_below, log_a[..., :, None], 0.0)  # [..., k, j]
    sums = jnp.cumsum(steps, axis=-2)  # [..., i, j] = Σ_{j < k <= i}
    keep = jnp.tril(jnp.ones((t, t), bool))
    if restart is not None:
        crossings = jnp.cumsum(jnp.where(strictly_below, restart[..., :, None], False), axis=-2)
        keep = keep & (crossings == 0)
    return jnp.where(keep, sums, -jnp.inf)


def _expand_groups(B, heads):
    """(b, l, g, n) -> (b, l, h, n): head i uses group i // (h // g)."""
    return jnp.repeat(B, heads // B.shape[2], axis=2)


def _from_start(log_a, resets):
    """(b, h, t) decay exp(Σ_{k <= i} log_a[k]) of a state entering before step 0 (zero after a
    restart), as segment sums over one extra leading step."""
    log_a = jnp.pad(log_a, [(0, 0), (0, 0), (1, 0)])
    resets = None if resets is None else jnp.pad(resets, [(0, 0), (0, 0), (1, 0)])
    return jnp.exp(segment_sum(log_a, resets)[..., 1:, 0])


def _state_outputs(C, h0, decay):
    """(b, t, h, p) outputs of a state h0 (b, h, p, n) entering a block: decay (b, h, t)."""
    return jnp.einsum("bihn,bhpn,bhi->bihp", C, h0, decay, precision=HIGHEST)


def _quadratic_block(x, dt, A, B, C, h0, restart):
    """The exact quadratic form on one block of t steps.

    Args:
      x: (b, t, h, p).   dt: (b, t, h).   A: (h,).   B, C: (b, t, h, n) (groups expanded).
      h0: (b, h, p, n) state before the block, or None for zero.   restart: (b, t) bool or None.

    Returns:
      y: (b, t, h, p) = h_t C_t and the (b, h, p, n) state after the block.
    """
    log_a = jnp.moveaxis(dt * A, 1, -1)  # (b, h, t)
    resets = None if restart is None else restart[:, None, :]
    decay = jnp.exp(segment_sum(log_a, resets))  # (b, h, t_i, t_j)
    scores = jnp.einsum("bihn,bjhn->bhij", C, B, precision=HIGHEST) * decay
    dx = x * dt[..., None]  # (b, t, h, p)
    y = jnp.einsum("bhij,bjhp->bihp", scores, dx, precision=HIGHEST)
    h = jnp.einsum("bhj,bjhn,bjhp->bhpn", decay[:, :, -1, :], B, dx, precision=HIGHEST)
    if h0 is None:
        return y, h
    from_h0 = _from_start(log_a, resets)
    return y + _state_outputs(C, h0, from_h0), h + from_h0[..., -1, None, None] * h0


@SSD.register("quadratic")
def _quadratic(x, dt, A, B, C, h0, restart):
    heads = x.shape[2]
    return _quadratic_block(
        x, dt, A, _expand_groups(B, heads), _expand_groups(C, heads), h0, restart
    )


SSD.register("pallas")(pallas_ssd.ssd)


@SSD.register("chunked")
def _chunked(x, dt, A, B, C, h0, restart, *, chunk_size=64):
    """The four SSD steps on chunks of ``chunk_size``; the tail is padded with Δ = 0 steps
    (decay 1, no input), which leave the state unchanged."""
    if chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
    b, length, heads, p = x.shape
    size = min(chunk_size, length)
    chunks = -(-length // size)
    B, C = _expand_groups(B, heads), _expand_groups(C, heads)

    def to_chunks(a):  # (b, l, ...) -> (b * chunks, size, ...)
        a = jnp.pad(a, [(0, 0), (0, chunks * size - length)] + [(0, 0)] * (a.ndim - 2))
        return a.reshape(b * chunks, size, *a.shape[2:])

    xc, dtc, Bc, Cc = map(to_chunks, (x, dt, B, C))
    rc = None if restart is None else to_chunks(restart)
    # 1-2: each chunk from a zero state: its outputs and its final state
    y_diag, states = _quadratic_block(xc, dtc, A, Bc, Cc, None, rc)
    # 3: the state entering each chunk, by a recurrence over chunks
    log_a = dtc * A  # (b * chunks, size, h)
    total = jnp.sum(log_a, axis=1)  # (b * chunks, h)
    carried = jnp.ones_like(total, bool) if rc is None else ~jnp.any(rc, axis=1)[:, None]
    chunk_decay = jnp.where(carried, jnp.exp(total), 0.0).reshape(b, chunks, heads)

    def step(h, inputs):
        decay, state = inputs
        return decay[..., None, None] * h + state, h

    states = states.reshape(b, chunks, *states.shape[1:])
    h, entering = jax.lax.scan(
        step, h0, (jnp.moveaxis(chunk_decay, 1, 0), jnp.moveaxis(states, 1, 0))
    )
    entering = jnp.moveaxis(entering, 0, 1).reshape(b * chunks, heads, p, -1)
    # 4: each entering state's contribution to its chunk's outputs
    resets = None if rc is None else rc[:, None, :]
    y_off = _state_outputs(Cc, entering, _from_start(jnp.moveaxis(log_a, 1, -1), resets))
    y = (y_diag + y_off).reshape(b, chunks * size, heads, p)[:, :length]
    return y, h


def ssd(
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
    segment_ids=None,
    return_state=False,
    impl="auto",
    **options,
):
    """SSD, the selective scan of Mamba-2: scalar A per head, B and C shared by head groups.

    Args:
      x: (b, l, h, p) input.
      dt: (b, l, h) step size Δ per head, before ``dt_bias`` and ``dt_softplus``.
      A: (h,) negative decay rate per head.
      B, C: (b, l, g, n) with h divisible by g.
      D: optional (h,) or (h, p) skip connection.
      z: optional (b, l, h, p) gate: y is multiplied by silu(z).
      dt_bias: optional (h,) added to dt.
      dt_softplus: apply softplus to dt (after the bias).
      h0: optional (b, h, p, n) state before the first step.
      segment_ids: optional (b, l) ints marking packed sequences: the state restarts from zero
        where a new segment starts.
      return_state: also return the final state, which continues the scan.
      impl: "auto" (``quadratic`` up to length 64, else ``chunked``) or a name in ``SSD``.
      **options: the implementation's own options, e.g. ``chunk_size`` of ``chunked``.

    Returns:
      y: (b, l, h, p) in x.dtype (math in float32, or float64 for float64 inputs), and the
      (b, h, p, n) final state in the compute dtype if ``return_state``.
    """
    _check_shapes(x, dt, A, B, C, D, z, dt_bias, h0, segment_ids)
    b, _, heads, p = x.shape
    f = compute_dtype(x.dtype, A.dtype)
    xf, delta, Bf, Cf = (a.astype(f) for a in (x, _delta(dt, dt_bias, dt_softplus, f), B, C))
    h = jnp.zeros((b, heads, p, B.shape[-1]), f) if h0 is None else h0.astype(f)
    restart = None if segment_ids is None else reference.segment_starts(segment_ids)
    y, h = SSD(impl, xf, delta, A.astype(f), Bf, Cf, h, restart, options=options)
    if D is not None and D.ndim == 1:
        D = jnp.broadcast_to(D[:, None], (heads, p))
    y = _skip_and_gate(y, xf, D, z)
    return (y.astype(x.dtype), h) if return_state else y.astype(x.dtype)


def _check_shapes(x, dt, A, B, C, D, z, dt_bias, h0, segment_ids):
    """Raise a one-line ValueError saying which argument has a wrong shape and what is valid."""
    if x.ndim != 4:
        raise ValueError(f"ssd: x must be (b, l, h, p), got shape {x.shape}")
    b, length, heads, p = x.shape
    if B.ndim != 4 or B.shape[:2] != (b, length) or heads % B.shape[2]:
        raise ValueError(
            f"ssd: B must be (b, l, g, n) with g dividing h={heads}, b={b}, l={length}; "
            f"got {B.shape}"
        )
    n = B.shape[-1]
    expected = {
        "dt": (dt, [(b, length, heads)]),
        "A": (A, [(heads,)]),
        "C": (C, [B.shape]),
        "D": (D, [(heads,), (heads, p)]),
        "z": (z, [x.shape]),
        "dt_bias": (dt_bias, [(heads,)]),
        "h0": (h0, [(b, heads, p, n)]),
        "segment_ids": (segment_ids, [(b, length)]),
    }
    for name, (value, shapes) in expected.items():
        if value is not None and value.shape not in shapes:
            valid = " or ".join(map(str, shapes))
            raise ValueError(f"ssd: {name} must have shape {valid}, got {value.shape}")


SSD_STATE_UPDATE = Op("ssd_state_update", auto=lambda *args, **kwargs: "reference")


@SSD_STATE_UPDATE.register("reference")
def _reference_state_update(h, x, dt, A, B, C, D=None, z=None, *, dt_bias=None, dt_softplus=False):
    """The selective scan's reference step on h·p channels (see ``ssd_state_update``)."""
    b, heads, p = x.shape
    n = B.shape[-1]
    if D is not None and D.ndim == 1:
        D = jnp.broadcast_to(D[:, None], (heads, p))
    y, h = reference.selective_state_update(
        h.reshape(b, heads * p, n),
        x.reshape(b, heads * p),
        jnp.repeat(dt, p, axis=-1),
        jnp.broadcast_to(jnp.repeat(A, p)[:, None], (heads * p, n)),
        B,
        C,
        None if D is None else D.reshape(heads * p),
        None if z is None else z.reshape(b, heads * p),
        dt_bias=None if dt_bias is None else jnp.repeat(dt_bias, p),
        dt_softplus=dt_softplus,
    )
    return y.reshape(x.shape), h.reshape(b, heads, p, n)


def ssd_state_update(
    h, x, dt, A, B, C, D=None, z=None, *, dt_bias=None, dt_softplus=False, impl="auto"
):
    """One step of SSD (one Mamba-2 decode step).

    Args:
      h: (b, h, p, n) state.   x, z: (b, h, p).   dt: (b, h).   A: (h,).   B, C: (b, g, n).
      D: optional (h,) or (h, p).   dt_bias: optional (h,).   dt_softplus, impl: as in ``ssd``.

    Returns:
      y: (b, h, p) in x.dtype and the new (b, h, p, n) state in the compute dtype, equal to
      ``ssd`` on a length-1 sequence with ``h0=h``.
    """
    seq = [None if a is None else a[:, None] for a in (x, dt, B, C, z)]
    _check_shapes(seq[0], seq[1], A, seq[2], seq[3], D, seq[4], dt_bias, h, None)
    return SSD_STATE_UPDATE(impl, h, x, dt, A, B, C, D, z, dt_bias=dt_bias, dt_softplus=dt_softplus)
