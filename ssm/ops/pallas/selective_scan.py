"""The selective scan as a Pallas kernel: time in blocks, the state on chip, forward and backward.

Grid (b, d / bd): a program owns bd channels of one row and their (bd, n) state and walks the
sequence in blocks of T steps. A block's T states are formed at once from cumulative sums of Δ
(S_t = Σ_{r<=t} Δ_r, log-decays P_t = A S_t), never one step after another:

- factored form: h_t = exp(P_t) (h + Σ_{r<=t} exp(-P_r) u_r), u = Δ x B: two exponentials per
  element. Used when the block has no restart and |P| <= ``factor_limit`` over the whole tile, so
  that exp(-P) cannot overflow (|error| stays that of float32 on u and h);
- pair form (SSD's segment sums): h_t = Σ_{r<=t, same segment} exp(A (S_t - S_r)) u_r, plus h
  decayed while no restart: T times the exponentials, exact for any decay and for restarts.

The forward never writes (b, l, d, n): for the backward it saves the states at block starts,
(b, l / T, d, n). The backward walks the blocks in reverse, recomputes a block's states from its
saved start and carries the adjoint λ_t = ∂L/∂h_t = gy_t C_t + a_{t+1} λ_{t+1} (suffix sums by a
triangular matmul: the Triton backend has no reverse cumsum, nor slices of in-register arrays,
hence the one-hot reductions for the first and last rows).

Padding (zero Δ, x, B, C: identity steps) brings l to a multiple of T, each group's channels to
a multiple of bd and n to a power of two, as Triton's block shapes need.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from ssm.ops.dispatch import Unsupported
from ssm.ops.numerics import HIGHEST
from ssm.ops.pallas import selective_scan_tpu

# Block sizes per platform: T time steps per block, bd channels per program (a power of two).
BLOCKS = {"gpu": {"time_block": 16, "d_block": 32}, "cpu": {"time_block": 16, "d_block": 32}}
MIN_DOT = 16  # Triton's smallest matmul tile (the backward's (T, T) suffix sums)
TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)  # the GPU backend (not Mosaic GPU)
BACKENDS = {"triton": "gpu", "mosaic": "tpu"}  # Pallas backend -> the platform it compiles for
FACTOR_LIMIT = 40.0  # exp(40) * |u| * T stays far below float32's 3e38


def row(a, index):
    """a[index] along axis 0 by a one-hot reduction (no slices of in-register arrays)."""
    rows = jnp.arange(a.shape[0]).reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.sum(jnp.where(rows == index, a, 0), axis=0)


def _log_decays(dt, A):
    """P (T, bd, n) = A ⊙ cumsum Δ, the block's log-decay from its start through each step, and
    P at the last step (bd, n)."""
    return A[None] * jnp.cumsum(dt, axis=0)[:, :, None], A * jnp.sum(dt, axis=0)[:, None]


def _factored(restart, total, factor_limit):
    """Whether the factored form serves this block: no restart and no decay beyond the limit."""
    return (jnp.sum(restart) == 0) & (jnp.min(total) >= -factor_limit)


def _states_factored(h, P, u):
    """(T, bd, n) states from h (bd, n), log-decays P and inputs u (T, bd, n); no restart."""
    return jnp.exp(P) * (h[None] + jnp.cumsum(jnp.exp(-P) * u, axis=0))


def _states_pairs(h, P, u, restart):
    """``_states_factored`` by pairs of steps (t, r <= t) of one segment, for any decay."""
    steps, segment = jnp.arange(P.shape[0]), jnp.cumsum(restart)
    same = (steps[:, None] >= steps[None, :]) & (segment[:, None] == segment[None, :])
    decay = jnp.exp(jnp.where(same[:, :, None, None], P[:, None] - P[None, :], -jnp.inf))
    from_start = jnp.where((segment == 0)[:, None, None], jnp.exp(P), 0.0)
    return jnp.sum(decay * u[None], axis=1) + from_start * h[None]


def _adjoint_factored(g, P, total, local):
    """(T, bd, n) λ from g (bd, n), the gradient reaching the block's last state from later
    steps, and the direct terms ``local`` (T, bd, n) = gy_t C_t; no restart."""
    steps = jnp.arange(P.shape[0])
    ahead = (steps[:, None] <= steps[None, :]).astype(local.dtype)  # (t, s): s >= t
    terms = (jnp.exp(P) * local).reshape(local.shape[0], -1)
    suffix = jnp.dot(ahead, terms, precision=HIGHEST).reshape(local.shape)
    return jnp.exp(-P) * (suffix + jnp.exp(total)[None] * g[None])


def _adjoint_pairs(g, P, total, local, restart):
    """``_adjoint_factored`` by pairs of steps (t, s >= t) of one segment, for any decay."""
    steps, segment = jnp.arange(P.shape[0]), jnp.cumsum(restart)
    same = (steps[:, None] <= steps[None, :]) & (segment[:, None] == segment[None, :])
    decay = jnp.exp(jnp.where(same[:, :, None, None], P[None, :] - P[:, None], -jnp.inf))
    to_end = jnp.where((segment == jnp.sum(restart))[:, None, None], jnp.exp(total - P), 0.0)
    return jnp.sum(decay * local[None], axis=1) + to_end * g[None]


def _block_states(h, dt, A, u, restart, factor_limit):
    """Every state of one block.

    Args:
      h: (bd, n) state before the block.   dt: (T, bd) Δ.   A: (bd, n).   u: (T, bd, n) Δ x B.
      restart: (T,) 1 where the state restarts from zero before the step, else 0.

    Returns:
      (T, bd, n) states h_t after each step.
    """
    P, total = _log_decays(dt, A)
    return jax.lax.cond(
        _factored(restart, total, factor_limit),
        lambda: _states_factored(h, P, u),
        lambda: _states_pairs(h, P, u, restart),
    )


def _block_adjoint(g, dt, A, local, restart, factor_limit):
    """λ_t = ∂L/∂h_t over one block (arguments as in ``_block_states`` and
    ``_adjoint_factored``) -> (T, bd, n)."""
    P, total = _log_decays(dt, A)
    return jax.lax.cond(
        _factored(restart, total, factor_limit),
        lambda: _adjoint_factored(g, P, total, local),
        lambda: _adjoint_pairs(g, P, total, local, restart),
    )


def _forward_kernel(
    x_ref, dt_ref, A_ref, B_ref, C_ref, r_ref, h0_ref, y_ref, h_ref, *starts_ref, T, factor_limit
):
    """One (row, channel tile): y (l, bd) and the final state (bd, n) [and block-start states]."""
    A = A_ref[...]

    def block(k, h):
        rows = pl.ds(pl.multiple_of(k * T, T), T)
        dt, B = dt_ref[rows, :], B_ref[rows, :]
        if starts_ref:
            starts_ref[0][pl.ds(k, 1)] = h[None]
        u = (dt * x_ref[rows, :])[:, :, None] * B[:, None, :]
        states = _block_states(h, dt, A, u, r_ref[rows], factor_limit)
        y_ref[rows, :] = jnp.sum(states * C_ref[rows, :][:, None, :], axis=-1)
        return row(states, T - 1)

    h_ref[...] = jax.lax.fori_loop(0, x_ref.shape[0] // T, block, h0_ref[...])


def _backward_kernel(
    x_ref, dt_ref, A_ref, B_ref, C_ref, r_ref, starts_ref, gy_ref, gh_ref,
    gx_ref, gdt_ref, gB_ref, gC_ref, gA_ref, gh0_ref, *, T, factor_limit,
):  # fmt: skip
    """One (row, channel tile), blocks in reverse: gradients of x, Δ (l, bd), of B, C summed over
    the tile's channels (l, n), of A summed over the row (bd, n), and of the initial state."""
    A = A_ref[...]
    blocks = x_ref.shape[0] // T

    def block(i, carry):
        g, gA = carry
        k = blocks - 1 - i
        rows = pl.ds(pl.multiple_of(k * T, T), T)
        refs = (x_ref, dt_ref, B_ref, C_ref, r_ref, gy_ref)
        x, dt, B, C, restart, gy = (ref[rows] for ref in refs)
        dtx = dt * x
        u = dtx[:, :, None] * B[:, None, :]
        states = _block_states(starts_ref[pl.ds(k, 1)][0], dt, A, u, restart, factor_limit)
        lam = _block_adjoint(g, dt, A, gy[:, :, None] * C[:, None, :], restart, factor_limit)
        decayed = states - u  # a_t h_{t-1}
        lam_B = jnp.sum(lam * B[:, None, :], axis=-1)
        gx_ref[rows, :] = lam_B * dt
        gdt_ref[rows, :] = lam_B * x + jnp.sum(lam * decayed * A[None], axis=-1)
        gB_ref[rows, :] = jnp.sum(lam * dtx[:, :, None], axis=1)
        gC_ref[rows, :] = jnp.sum(gy[:, :, None] * states, axis=1)
        gA = gA + jnp.sum(lam * decayed * dt[:, :, None], axis=0)
        first_decay = jnp.exp(A * row(dt, 0)[:, None]) * (1 - row(restart, 0))
        return first_decay * row(lam, 0), gA

    g, gA = jax.lax.fori_loop(0, blocks, block, (gh_ref[...], jnp.zeros_like(A)))
    gh0_ref[...], gA_ref[...] = g, gA


def _specs(b, length, d, g, n, bd):
    """BlockSpecs of the grid (b, d / bd): sequences, B/C of the tile's group, A, restart,
    states, and per-tile (l, n) partial sums."""
    per_group = d // g // bd
    return dict(
        seq=pl.BlockSpec((None, length, bd), lambda i, j: (i, 0, j)),
        bc=pl.BlockSpec((None, length, None, n), lambda i, j: (i, 0, j // per_group, 0)),
        A=pl.BlockSpec((bd, n), lambda i, j: (j, 0)),
        restart=pl.BlockSpec((None, length), lambda i, j: (i, 0)),
        state=pl.BlockSpec((None, bd, n), lambda i, j: (i, j, 0)),
        tile=pl.BlockSpec((None, None, length, n), lambda i, j: (i, j, 0, 0)),
    )


def _forward(x, dt, A, B, C, h0, restart, config, save):
    T, bd, factor_limit, interpret = config
    (b, length, d), (g, n) = x.shape, B.shape[2:]
    spec = _specs(b, length, d, g, n, bd)
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(h0.shape, x.dtype)]
    out_specs = [spec["seq"], spec["state"]]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((b, length // T, d, n), x.dtype))
        out_specs.append(pl.BlockSpec((None, length // T, bd, n), lambda i, j: (i, 0, j, 0)))
    return pl.pallas_call(
        functools.partial(_forward_kernel, T=T, factor_limit=factor_limit),
        grid=(b, d // bd),
        in_specs=[spec[k] for k in ("seq", "seq", "A", "bc", "bc", "restart", "state")],
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=TRITON,
    )(x, dt, A, B, C, restart, h0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _scan(x, dt, A, B, C, h0, restart, config):
    """(y, final state) on padded inputs; ``config`` = (T, bd, factor_limit, interpret)."""
    return tuple(_forward(x, dt, A, B, C, h0, restart, config, save=False))


def _scan_forward(x, dt, A, B, C, h0, restart, config):
    y, h, starts = _forward(x, dt, A, B, C, h0, restart, config, save=True)
    return (y, h), (x, dt, A, B, C, restart, starts)


def _scan_backward(config, residuals, cotangents):
    T, bd, factor_limit, interpret = config
    x, dt, A, B, C, restart, starts = residuals
    gy, gh = cotangents
    (b, length, d), (g, n) = x.shape, B.shape[2:]
    spec = _specs(b, length, d, g, n, bd)
    tiles = jax.ShapeDtypeStruct((b, d // bd, length, n), x.dtype)
    gx, gdt, gB, gC, gA, gh0 = pl.pallas_call(
        functools.partial(_backward_kernel, T=T, factor_limit=factor_limit),
        grid=(b, d // bd),
        in_specs=[spec[k] for k in ("seq", "seq", "A", "bc", "bc", "restart")]
        + [pl.BlockSpec((None, length // T, bd, n), lambda i, j: (i, 0, j, 0))]
        + [spec["seq"], spec["state"]],
        out_specs=[spec["seq"], spec["seq"], spec["tile"], spec["tile"], spec["state"]]
        + [spec["state"]],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype)] * 2
        + [tiles, tiles]
        + [jax.ShapeDtypeStruct((b, d, n), x.dtype), jax.ShapeDtypeStruct((b, d, n), x.dtype)],
        interpret=interpret,
        compiler_params=TRITON,
    )(x, dt, A, B, C, restart, starts, gy, gh)

    def per_group(tile_sums):  # (b, d / bd, l, n) -> (b, l, g, n)
        return jnp.moveaxis(tile_sums.reshape(b, g, -1, length, n).sum(axis=2), 1, 2)

    return gx, gdt, gA.sum(axis=0), per_group(gB), per_group(gC), gh0, None


_scan.defvjp(_scan_forward, _scan_backward)


def selective_scan(
    x, dt, A, B, C, h, restart, *, time_block=None, d_block=None, factor_limit=FACTOR_LIMIT,
    backend=None, interpret=None,
):  # fmt: skip
    """The ``SELECTIVE_SCAN`` implementation signature (see ``ssm.ops.selective_scan``).

    Args:
      x, dt: (b, l, d) compute dtype, the final Δ.   A: (d, n).   B, C: (b, l, g, n).
      h: (b, d, n) initial state.   restart: (b, l) bool or None.
      time_block: T steps per block; d_block: channels per program (default: ``BLOCKS``).
      factor_limit: the largest |log-decay| of a block for the factored form (0: pair form only).
      backend: "triton" (this file's kernel, for GPUs) or "mosaic" (``selective_scan_tpu``, for
        TPUs); default: by platform.
      interpret: run the kernel in the Pallas interpreter (default: on CPU, where nothing else
        runs it).

    Returns:
      y (b, l, d) = C · h and the (b, d, n) final state.
    """
    platform = jax.default_backend()
    interpret = platform == "cpu" if interpret is None else interpret
    backend = backend or ("mosaic" if platform == "tpu" else "triton")
    if backend not in BACKENDS:
        raise ValueError(
            f"selective_scan pallas: backend {backend!r} is not valid; valid: triton, mosaic"
        )
    if not interpret and platform != BACKENDS[backend]:
        raise Unsupported(
            f"the {backend} selective scan is compiled for {BACKENDS[backend]}s, not {platform}"
        )
    if backend == "mosaic":
        return selective_scan_tpu.selective_scan(
            x, dt, A, B, C, h, restart, time_block=time_block, d_block=d_block, interpret=interpret
        )
    blocks = BLOCKS.get(platform, BLOCKS["gpu"])
    T = time_block or blocks["time_block"]
    (b, length, d), (g, n) = x.shape, B.shape[2:]
    bd = min(d_block or blocks["d_block"], pl.next_power_of_2(d // g))
    for name, value in (("time_block", T), ("d_block", bd)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"selective_scan pallas: {name} must be a power of two, got {value}")
    if not interpret and T < MIN_DOT:
        raise ValueError(
            f"selective_scan pallas: time_block must be >= {MIN_DOT} on a GPU, got {T}"
        )
    padded_length = math.ceil(length / T) * T
    group_width = math.ceil(d // g / bd) * bd
    n_padded = pl.next_power_of_2(n)

    def channels(a, axis):  # pad each group's channels (axis of size d) to group_width
        shape = a.shape[:axis] + (g, d // g) + a.shape[axis + 1 :]
        pad = [(0, 0)] * len(shape)
        pad[axis + 1] = (0, group_width - d // g)
        padded = jnp.pad(a.reshape(shape), pad)
        return padded.reshape(a.shape[:axis] + (g * group_width,) + a.shape[axis + 1 :])

    def time(a):
        return jnp.pad(a, [(0, 0), (0, padded_length - length)] + [(0, 0)] * (a.ndim - 2))

    def state_size(a):
        return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n_padded - n)])

    restart = jnp.zeros((b, length), bool) if restart is None else restart
    y, h = _scan(
        channels(time(x), 2),
        channels(time(dt), 2),
        state_size(channels(A, 0)),
        state_size(time(B)),
        state_size(time(C)),
        state_size(channels(h, 1)),
        time(restart.astype(x.dtype)),
        (T, bd, float(factor_limit), bool(interpret)),
    )
    y = y[:, :length].reshape(b, length, g, group_width)[..., : d // g].reshape(b, length, d)
    h = h.reshape(b, g, group_width, n_padded)[:, :, : d // g, :n].reshape(b, d, n)
    return y, h
