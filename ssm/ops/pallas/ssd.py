"""Mamba-2's SSD as a Pallas kernel: one program per (row, head), chunks of matmuls, the (p, n)
state carried on chip from chunk to chunk; forward and backward.

Per chunk of T steps, with log-decays a_k = Δ_k A (A scalar per head), u = Δ x (T, p):

    M[t, s] = exp(Σ_{s<k<=t} a_k) for s <= t in one segment (segment sums: a cumulative sum of
              masked steps, never a difference of large sums), else 0;
    y = (M ⊙ C Bᵀ) u + e ⊙ (C hᵀ),   e_t = exp(Σ_{k<=t} a_k) while no restart;
    h' = e_{T-1} h + (w ⊙ u)ᵀ B,      w_s = M[T-1, s].

Every exponential is of a sum of non-positive terms: nothing overflows. The forward saves the
state entering each chunk, (b, h, l / T, p, n); the backward walks the chunks in reverse from
them, with the same matmuls transposed, and sums the log-decay gradient over the spans that
hold each step. Padding (Δ = 0: identity steps) brings l to a multiple of T and p, n to powers
of two of at least 16 (Triton's smallest matmul).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from ssm.ops.dispatch import Unsupported
from ssm.ops.numerics import HIGHEST
from ssm.ops.pallas.selective_scan import row

CHUNK = {"gpu": 64, "cpu": 64}  # T steps per chunk (a power of two)
MIN_DOT = 16  # Triton's smallest matmul tile: p and n are padded to it, chunks are no shorter
TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)  # the GPU backend (not Mosaic GPU)


def _dot(a, b):
    return jnp.dot(a, b, precision=HIGHEST)


def _dot_t(a, b):
    """aᵀ b."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=HIGHEST)


def _dot_nt(a, b):
    """a bᵀ."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=HIGHEST)


def _decays(dt, A, restart):
    """(M (T, T), e (T,)) of one chunk: span decays within a segment, decay from the chunk start."""
    T = dt.shape[0]
    steps = jnp.arange(T)
    below = steps[:, None] > steps[None, :]  # [k, j]: k > j
    log_a = dt * A
    sums = jnp.cumsum(jnp.where(below, log_a[:, None], 0.0), axis=0)  # [i, j] = Σ_{j<k<=i}
    crossings = jnp.cumsum(jnp.where(below, restart[:, None], 0.0), axis=0)
    keep = (steps[:, None] >= steps[None, :]) & (crossings == 0)
    decay = jnp.where(keep, jnp.exp(jnp.where(keep, sums, 0.0)), 0.0)
    from_start = jnp.where(jnp.cumsum(restart) == 0, jnp.exp(jnp.cumsum(log_a)), 0.0)
    return decay, from_start


def _forward_kernel(
    A_ref, x_ref, dt_ref, B_ref, C_ref, r_ref, h0_ref, y_ref, h_ref, *starts_ref, T
):  # fmt: skip
    """One (row, head): y (l, p) and the final state (p, n) [and the chunk-entering states]."""
    A = jnp.sum(A_ref[...])

    def chunk(k, h):
        rows = pl.ds(pl.multiple_of(k * T, T), T)
        x, dt, B, C = x_ref[rows, :], dt_ref[rows], B_ref[rows, :], C_ref[rows, :]
        if starts_ref:
            starts_ref[0][pl.ds(k, 1)] = h[None]
        decay, from_start = _decays(dt, A, r_ref[rows])
        u = dt[:, None] * x
        y_ref[rows, :] = _dot(decay * _dot_nt(C, B), u) + from_start[:, None] * _dot_nt(C, h)
        return row(from_start, T - 1) * h + _dot_t(row(decay, T - 1)[:, None] * u, B)

    h_ref[...] = jax.lax.fori_loop(0, x_ref.shape[0] // T, chunk, h0_ref[...])


def _backward_kernel(
    A_ref, x_ref, dt_ref, B_ref, C_ref, r_ref, starts_ref, gy_ref, gh_ref,
    gx_ref, gdt_ref, gB_ref, gC_ref, gA_ref, gh0_ref, *, T,
):  # fmt: skip
    """One (row, head), chunks in reverse: gradients of x (l, p), Δ (l,), this head's B and C
    (l, n), A (1,) and the initial state (p, n)."""
    A = jnp.sum(A_ref[...])
    chunks = x_ref.shape[0] // T
    steps = jnp.arange(T)
    last = steps == T - 1

    def chunk(i, carry):
        g_next, gA = carry  # g_next: ∂L/∂(state after this chunk)
        k = chunks - 1 - i
        rows = pl.ds(pl.multiple_of(k * T, T), T)
        x, dt, B, C, gy = (
            x_ref[rows, :],
            dt_ref[rows],
            B_ref[rows, :],
            C_ref[rows, :],
            gy_ref[rows, :],
        )
        h = starts_ref[pl.ds(k, 1)][0]
        decay, from_start = _decays(dt, A, r_ref[rows])
        u = dt[:, None] * x
        scores = _dot_nt(C, B)  # (T, T) C_t · B_s
        to_end = row(decay, T - 1)  # w
        g_scores = _dot_nt(gy, u)  # ∂L/∂(decay ⊙ scores)
        gy_start = from_start[:, None] * gy
        B_g = _dot_nt(B, g_next)  # (T, p)
        g_u = _dot_t(decay * scores, gy) + to_end[:, None] * B_g
        masked = g_scores * decay
        gC = _dot(masked, B) + _dot(gy_start, h)
        gB = _dot_t(masked, C) + _dot(to_end[:, None] * u, g_next)
        g_h = _dot_t(gy_start, C) + row(from_start, T - 1) * g_next
        # ∂L/∂decay (incl. its last row w) and ∂L/∂from_start (incl. its last entry)
        g_decay = g_scores * scores + jnp.where(last[:, None], jnp.sum(u * B_g, axis=1)[None], 0)
        g_from = jnp.sum(gy * _dot_nt(C, h), axis=1) + jnp.where(last, jnp.sum(g_next * h), 0)
        # a_k lies in the spans (s, t] with s < k <= t, and in the prefixes [0, t] with t >= k
        after = (steps[:, None] < steps[None, :]).astype(x.dtype)  # [s, k]: s < k
        spans = _dot(g_decay * decay, after)  # [t, k] = Σ_{s<k} R[t, s]
        holds = steps[:, None] >= steps[None, :]  # [t, k]: t >= k
        g_log_a = jnp.sum(jnp.where(holds, spans + (g_from * from_start)[:, None], 0), axis=0)
        gx_ref[rows, :] = dt[:, None] * g_u
        gdt_ref[rows] = jnp.sum(x * g_u, axis=1) + A * g_log_a
        gB_ref[rows, :], gC_ref[rows, :] = gB, gC
        return g_h, gA + jnp.sum(dt * g_log_a)

    zero = jnp.zeros((), x_ref.dtype)
    g, gA = jax.lax.fori_loop(0, chunks, chunk, (gh_ref[...], zero))
    gh0_ref[...], gA_ref[...] = g, jnp.full(gA_ref.shape, gA)


def _specs(length, heads, g, p, n):
    """BlockSpecs of the grid (b, h)."""
    per_group = heads // g
    return dict(
        A=pl.BlockSpec((1,), lambda i, j: (j,)),
        x=pl.BlockSpec((None, length, None, p), lambda i, j: (i, 0, j, 0)),
        dt=pl.BlockSpec((None, length, None), lambda i, j: (i, 0, j)),
        bc=pl.BlockSpec((None, length, None, n), lambda i, j: (i, 0, j // per_group, 0)),
        restart=pl.BlockSpec((None, length), lambda i, j: (i, 0)),
        state=pl.BlockSpec((None, None, p, n), lambda i, j: (i, j, 0, 0)),
        head_bc=pl.BlockSpec((None, length, None, n), lambda i, j: (i, 0, j, 0)),
        gA=pl.BlockSpec((None, 1), lambda i, j: (i, j)),
    )


def _starts_spec(length, T, p, n):
    return pl.BlockSpec((None, None, length // T, p, n), lambda i, j: (i, j, 0, 0, 0))


def _forward(A, x, dt, B, C, h0, restart, config, save):
    T, interpret = config
    (b, length, heads, p), (g, n) = x.shape, B.shape[2:]
    spec = _specs(length, heads, g, p, n)
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(h0.shape, x.dtype)]
    out_specs = [spec["x"], spec["state"]]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((b, heads, length // T, p, n), x.dtype))
        out_specs.append(_starts_spec(length, T, p, n))
    return pl.pallas_call(
        functools.partial(_forward_kernel, T=T),
        grid=(b, heads),
        in_specs=[spec[k] for k in ("A", "x", "dt", "bc", "bc", "restart", "state")],
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=TRITON,
    )(A, x, dt, B, C, restart, h0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _ssd(A, x, dt, B, C, h0, restart, config):
    """(y, final state) on padded inputs; ``config`` = (T, interpret)."""
    return tuple(_forward(A, x, dt, B, C, h0, restart, config, save=False))


def _ssd_forward(A, x, dt, B, C, h0, restart, config):
    y, h, starts = _forward(A, x, dt, B, C, h0, restart, config, save=True)
    return (y, h), (A, x, dt, B, C, restart, starts)


def _ssd_backward(config, residuals, cotangents):
    T, interpret = config
    A, x, dt, B, C, restart, starts = residuals
    gy, gh = cotangents
    (b, length, heads, p), (g, n) = x.shape, B.shape[2:]
    spec = _specs(length, heads, g, p, n)
    per_head = jax.ShapeDtypeStruct((b, length, heads, n), x.dtype)
    gx, gdt, gB, gC, gA, gh0 = pl.pallas_call(
        functools.partial(_backward_kernel, T=T),
        grid=(b, heads),
        in_specs=[spec[k] for k in ("A", "x", "dt", "bc", "bc", "restart")]
        + [_starts_spec(length, T, p, n), spec["x"], spec["state"]],
        out_specs=[spec[k] for k in ("x", "dt", "head_bc", "head_bc", "gA", "state")],
        out_shape=[
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct(dt.shape, x.dtype),
            per_head,
            per_head,
            jax.ShapeDtypeStruct((b, heads), x.dtype),
            jax.ShapeDtypeStruct((b, heads, p, n), x.dtype),
        ],
        interpret=interpret,
        compiler_params=TRITON,
    )(A, x, dt, B, C, restart, starts, gy, gh)

    def per_group(a):  # (b, l, h, n) -> (b, l, g, n): sum over each group's heads
        return a.reshape(b, length, g, heads // g, n).sum(axis=3)

    return gA.sum(axis=0), gx, gdt, per_group(gB), per_group(gC), gh0, None


_ssd.defvjp(_ssd_forward, _ssd_backward)


def ssd(x, dt, A, B, C, h, restart, *, time_block=None, interpret=None):
    """The ``SSD`` implementation signature (see ``ssm.ops.ssd``).

    Args:
      x: (b, l, h, p) compute dtype.   dt: (b, l, h) the final Δ.   A: (h,).   B, C: (b, l, g, n).
      h: (b, h, p, n) initial state.   restart: (b, l) bool or None.
      time_block: T steps per chunk, a power of two (default: ``CHUNK``; a Mamba-2 layer's
        ``chunk_size`` is that of the ``chunked`` impl, not this).
      interpret: run in the Pallas interpreter (default: on CPU, where nothing else runs it).

    Returns:
      y (b, l, h, p) = h_t C_t and the (b, h, p, n) final state.
    """
    platform = jax.default_backend()
    interpret = platform == "cpu" if interpret is None else interpret
    if not interpret and platform != "gpu":
        raise Unsupported(f"the Pallas SSD is compiled for GPUs only, not {platform}")
    T = time_block or CHUNK.get(platform, CHUNK["gpu"])
    if T < 1 or T & (T - 1):
        raise ValueError(f"ssd pallas: time_block must be a power of two, got {T}")
    if not interpret and T < MIN_DOT:
        raise ValueError(f"ssd pallas: time_block must be >= {MIN_DOT} on a GPU, got {T}")
    (b, length, _, p), n = x.shape, B.shape[-1]
    padded = math.ceil(length / T) * T
    p_padded, n_padded = (max(MIN_DOT, pl.next_power_of_2(size)) for size in (p, n))

    def pad(a, **widths):  # widths: axis -> padded size
        sizes = [(0, widths.get(f"axis{i}", size) - size) for i, size in enumerate(a.shape)]
        return jnp.pad(a, sizes)

    restart = jnp.zeros((b, length), bool) if restart is None else restart
    y, h = _ssd(
        A,
        pad(x, axis1=padded, axis3=p_padded),
        pad(dt, axis1=padded),
        pad(B, axis1=padded, axis3=n_padded),
        pad(C, axis1=padded, axis3=n_padded),
        pad(h, axis2=p_padded, axis3=n_padded),
        pad(restart.astype(x.dtype), axis1=padded),
        (T, bool(interpret)),
    )
    return y[:, :length, :, :p], h[:, :, :p, :n]
