"""The selective scan as a Pallas TPU (Mosaic) kernel, forward and backward.

Grid (b, d / bd, l / T), the time axis last and sequential ("arbitrary"): a program's (n, bd)
state lives in a VMEM scratch across its time blocks, which BlockSpecs stream in (double
buffered). The state is kept transposed, n on sublanes and bd channels on lanes, so a step is a
few full-width vector operations: h = exp(Δ_t A) h + B_t (Δ_t x_t), y_t = Σ_n C_t h. Every
per-step row is a leading-axis index of its block (x (T, 1, bd), B (T, n, 1)), the one dynamic
index Mosaic always takes. The backward runs the time blocks in reverse (the index maps count
down), recomputes a block's states into VMEM from the state saved at its start, and steps the
adjoint λ_t = gy_t C_t + a_{t+1} λ_{t+1} back through them.

Shapes: the wrapper brings l to a multiple of T, each group's channels to a multiple of bd and
n to a multiple of 8 (zero padding: identity steps). On a TPU, bd must be a multiple of 128 or
the whole padded width.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

BLOCKS = {"time_block": 64, "d_block": 128}
SEMANTICS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _step_inputs(refs, t):
    """Row t of a block: Δ, x (1, bd), B, C (n, 1), restart (1, 1)."""
    return tuple(ref[t] for ref in refs)


def _forward_kernel(
    A_ref, x_ref, dt_ref, B_ref, C_ref, r_ref, h0_ref, y_ref, h_ref, *rest, T, save
):  # fmt: skip
    starts_ref, state = (rest[0], rest[1]) if save else (None, rest[0])

    @pl.when(pl.program_id(2) == 0)
    def _():
        state[...] = h0_ref[...]

    if save:
        starts_ref[0] = state[...]
    A = A_ref[...]

    def step(t, h):
        dt, x, B, C, restart = _step_inputs((dt_ref, x_ref, B_ref, C_ref, r_ref), t)
        h = jnp.where(restart > 0, 0.0, jnp.exp(dt * A) * h) + B * (dt * x)
        y_ref[t] = jnp.sum(C * h, axis=0, keepdims=True)
        return h

    state[...] = jax.lax.fori_loop(0, T, step, state[...])
    h_ref[...] = state[...]


def _backward_kernel(
    A_ref, x_ref, dt_ref, B_ref, C_ref, r_ref, starts_ref, gy_ref, gh_ref,
    gx_ref, gdt_ref, gB_ref, gC_ref, gA_ref, gh0_ref, g_state, states, *, T,
):  # fmt: skip
    @pl.when(pl.program_id(2) == 0)
    def _():
        g_state[...] = gh_ref[...]
        gA_ref[...] = jnp.zeros_like(gA_ref)

    A = A_ref[...]
    refs = (dt_ref, x_ref, B_ref, C_ref, r_ref)

    def forward(t, h):
        dt, x, B, _, restart = _step_inputs(refs, t)
        h = jnp.where(restart > 0, 0.0, jnp.exp(dt * A) * h) + B * (dt * x)
        states[t] = h
        return h

    jax.lax.fori_loop(0, T, forward, starts_ref[0])

    def backward(i, carry):
        g, gA = carry  # g: the gradient reaching h_t from later steps
        t = T - 1 - i
        dt, x, B, C, restart = _step_inputs(refs, t)
        gy, h = gy_ref[t], states[t]
        lam = g + C * gy
        u = B * (dt * x)
        decayed = h - u  # a_t h_{t-1}
        lam_B = jnp.sum(lam * B, axis=0, keepdims=True)
        gx_ref[t] = lam_B * dt
        gdt_ref[t] = lam_B * x + jnp.sum(lam * decayed * A, axis=0, keepdims=True)
        gB_ref[t] = jnp.sum(lam * (dt * x), axis=1, keepdims=True)
        gC_ref[t] = jnp.sum(gy * h, axis=1, keepdims=True)
        decay = jnp.where(restart > 0, 0.0, jnp.exp(dt * A))
        return decay * lam, gA + lam * decayed * dt

    g, gA = jax.lax.fori_loop(0, T, backward, (g_state[...], gA_ref[...]))
    g_state[...], gA_ref[...], gh0_ref[...] = g, gA, g


def _specs(blocks, n, bd, per_group, reverse=False):
    """BlockSpecs of the grid (b, d / bd, l / T) (time blocks counted down if ``reverse``)."""

    def at(k):
        return blocks - 1 - k if reverse else k

    return dict(
        A=pl.BlockSpec((n, bd), lambda i, j, k: (0, j)),
        state=pl.BlockSpec((None, n, bd), lambda i, j, k: (i, 0, j)),
        starts=pl.BlockSpec((None, 1, n, bd), lambda i, j, k: (i, at(k), 0, j)),
        seq=lambda T: pl.BlockSpec((None, T, 1, bd), lambda i, j, k: (i, at(k), 0, j)),
        bc=lambda T: pl.BlockSpec((None, T, n, 1), lambda i, j, k: (i, at(k), j // per_group, 0)),
        restart=lambda T: pl.BlockSpec((None, T, 1, 1), lambda i, j, k: (i, at(k), 0, 0)),
        tile=lambda T: pl.BlockSpec((None, None, T, n, 1), lambda i, j, k: (i, j, at(k), 0, 0)),
    )


def _forward(A, x, dt, B, C, h0, restart, config, save):
    T, bd, interpret = config
    b, length, _, d = x.shape
    n = A.shape[0]
    blocks, per_group = length // T, d // (B.shape[2] // n) // bd
    spec = _specs(blocks, n, bd, per_group)
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(h0.shape, x.dtype)]
    out_specs = [spec["seq"](T), spec["state"]]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((b, blocks, n, d), x.dtype))
        out_specs.append(spec["starts"])
    return pl.pallas_call(
        functools.partial(_forward_kernel, T=T, save=save),
        grid=(b, d // bd, blocks),
        in_specs=[spec["A"], spec["seq"](T), spec["seq"](T), spec["bc"](T), spec["bc"](T)]
        + [spec["restart"](T), spec["state"]],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((n, bd), x.dtype)],
        compiler_params=SEMANTICS,
        interpret=interpret,
    )(A, x, dt, B, C, restart, h0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _scan(A, x, dt, B, C, h0, restart, config):
    """(y, final state) on the kernel's layouts; ``config`` = (T, bd, interpret)."""
    return tuple(_forward(A, x, dt, B, C, h0, restart, config, save=False))


def _scan_forward(A, x, dt, B, C, h0, restart, config):
    y, h, starts = _forward(A, x, dt, B, C, h0, restart, config, save=True)
    return (y, h), (A, x, dt, B, C, restart, starts)


def _scan_backward(config, residuals, cotangents):
    T, bd, interpret = config
    A, x, dt, B, C, restart, starts = residuals
    gy, gh = cotangents
    b, length, _, d = x.shape
    n, groups = A.shape[0], B.shape[2] // A.shape[0]
    blocks, per_group = length // T, d // groups // bd
    spec = _specs(blocks, n, bd, per_group, reverse=True)
    tiles = jax.ShapeDtypeStruct((b, d // bd, length, n, 1), x.dtype)
    states = jax.ShapeDtypeStruct((b, n, d), x.dtype)
    gx, gdt, gB, gC, gA, gh0 = pl.pallas_call(
        functools.partial(_backward_kernel, T=T),
        grid=(b, d // bd, blocks),
        in_specs=[spec["A"], spec["seq"](T), spec["seq"](T), spec["bc"](T), spec["bc"](T)]
        + [spec["restart"](T), spec["starts"], spec["seq"](T), spec["state"]],
        out_specs=[spec["seq"](T), spec["seq"](T), spec["tile"](T), spec["tile"](T)]
        + [spec["state"], spec["state"]],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype)] * 2 + [tiles, tiles, states, states],
        scratch_shapes=[pltpu.VMEM((n, bd), x.dtype), pltpu.VMEM((T, n, bd), x.dtype)],
        compiler_params=SEMANTICS,
        interpret=interpret,
    )(A, x, dt, B, C, restart, starts, gy, gh)

    def per_group_sum(tile_sums):  # (b, d / bd, l, n, 1) -> (b, l, g * n, 1)
        summed = tile_sums.reshape(b, groups, -1, length, n).sum(axis=2)
        return jnp.moveaxis(summed, 1, 2).reshape(b, length, groups * n, 1)

    return gA.sum(axis=0), gx, gdt, per_group_sum(gB), per_group_sum(gC), gh0, None


_scan.defvjp(_scan_forward, _scan_backward)


def selective_scan(x, dt, A, B, C, h, restart, *, time_block=None, d_block=None, interpret):
    """The ``SELECTIVE_SCAN`` implementation signature on TPU layouts (see
    ``ssm.ops.pallas.selective_scan``, which chooses this kernel on TPUs).

    Args:
      x, dt: (b, l, d).   A: (d, n).   B, C: (b, l, g, n).   h: (b, d, n).   restart: (b, l)
      bool or None.   time_block (multiple of 8), d_block: block sizes (default ``BLOCKS``).
      interpret: run in the Pallas interpreter (the generic one: 3x faster on CPU than
        pltpu.InterpretParams, and enough to check the math).

    Returns:
      y (b, l, d) = C · h and the (b, d, n) final state.
    """
    T = time_block or BLOCKS["time_block"]
    if T % 8:
        raise ValueError(
            f"selective_scan pallas (TPU): time_block must be a multiple of 8, got {T}"
        )
    (b, length, d), (g, n) = x.shape, B.shape[2:]
    width = d // g
    bd = min(d_block or BLOCKS["d_block"], width)
    padded_length, group_width, n_padded = (
        math.ceil(length / T) * T,
        math.ceil(width / bd) * bd,
        math.ceil(n / 8) * 8,
    )

    def channels(a, axis):  # pad each group's channels (axis of size d) to group_width
        shape = a.shape[:axis] + (g, width) + a.shape[axis + 1 :]
        pad = [(0, 0)] * len(shape)
        pad[axis + 1] = (0, group_width - width)
        return jnp.pad(a.reshape(shape), pad).reshape(a.shape[:axis] + (-1,) + a.shape[axis + 1 :])

    def time(a):
        return jnp.pad(a, [(0, 0), (0, padded_length - length)] + [(0, 0)] * (a.ndim - 2))

    def sequence(a):  # (b, l, d) -> (b, l_padded, 1, d_padded)
        return channels(time(a), 2)[:, :, None, :]

    def per_step_columns(a):  # (b, l, g, n) -> (b, l_padded, g * n_padded, 1)
        a = jnp.pad(time(a), [(0, 0)] * 3 + [(0, n_padded - n)])
        return a.reshape(b, padded_length, g * n_padded, 1)

    def transposed_state(a):  # (..., d, n) -> (..., n_padded, d_padded)
        a = jnp.pad(channels(a, a.ndim - 2), [(0, 0)] * (a.ndim - 1) + [(0, n_padded - n)])
        return jnp.swapaxes(a, -1, -2)

    restart = jnp.zeros((b, length), bool) if restart is None else restart
    y, h_last = _scan(
        transposed_state(A),
        sequence(x),
        sequence(dt),
        per_step_columns(B),
        per_step_columns(C),
        transposed_state(h),
        time(restart.astype(x.dtype))[:, :, None, None],
        (T, bd, bool(interpret)),
    )
    y = y[:, :length, 0].reshape(b, length, g, group_width)[..., :width].reshape(b, length, d)
    h_last = jnp.swapaxes(h_last, -1, -2)[:, :, :n].reshape(b, g, group_width, n)
    return y, h_last[:, :, :width].reshape(b, d, n)
