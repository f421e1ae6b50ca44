"""Slow, obviously-correct, step-by-step versions of every op. Tests compare fast paths to these.

Each works in ``ssm.ops.numerics.compute_dtype`` of its inputs: float32, or float64 when given
float64 (x64 enabled), so numerics can be checked against float64.
"""

import jax
import jax.numpy as jnp

from ssm.ops.numerics import HIGHEST, complex_dtype, compute_dtype


def diagonal_ssm_step(h, u, dA, dB, C, D):
    """One step of a discrete diagonal SSM: h = Ā h + dB u;  y = 2 Re(C h) + D u.

    Args:
      h: (b, h, n2) complex state.   u: (b, h) real input.   dA, dB: (h, n2) complex.
      C: (c, h, n2) complex.   D: (c, h) real.

    Returns:
      y: (b, c, h) real and the new state (b, h, n2).
    """
    u = u.astype(compute_dtype(u.dtype, D.dtype))
    h = dA * h + dB * u[..., None]
    y = 2.0 * jnp.einsum("chn,bhn->bch", C, h, precision=HIGHEST).real + D * u[:, None, :]
    return y, h


def diagonal_ssm_scan(dA, dB, C, D, u, h0=None):
    """``diagonal_ssm_step`` over the sequence u (b, l, h) -> y (b, l, c, h), final state.

    The conjugate half of the state is implicit (hence the ``2 Re``); h0: optional (b, h, n2).
    """
    if h0 is None:
        h0 = jnp.zeros((u.shape[0], *dA.shape), complex_dtype(u.dtype, D.dtype))
    h, ys = jax.lax.scan(
        lambda h, u_t: diagonal_ssm_step(h, u_t, dA, dB, C, D)[::-1], h0, jnp.swapaxes(u, 0, 1)
    )
    return jnp.swapaxes(ys, 0, 1), h


def causal_conv(u, k):
    """y[t] = sum_{s<=t} k[t-s] u[s] by an explicit Toeplitz sum.  u: (b, l, ...), k: (l_k, ...)."""
    length = u.shape[1]
    dtype = compute_dtype(u.dtype, k.dtype)
    k = jnp.pad(
        k[:length].astype(dtype), [(0, length - min(length, k.shape[0]))] + [(0, 0)] * (k.ndim - 1)
    )
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]  # (t, s)
    toeplitz = jnp.where((lag >= 0)[(...,) + (None,) * (k.ndim - 1)], k[jnp.clip(lag, 0)], 0.0)
    return jnp.einsum("ts...,bs...->bt...", toeplitz, u.astype(dtype), precision=HIGHEST)


def bidirectional_conv(u, k, k_reverse):
    """Causal conv with k plus the causal conv of the reversed sequence with k_reverse, reversed."""
    return causal_conv(u, k) + causal_conv(u[:, ::-1], k_reverse)[:, ::-1]


def selective_state_update(h, x, dt, A, B, C, D=None, z=None, *, dt_bias=None, dt_softplus=False):
    """One step of Mamba's selective SSM (see ``ssm.ops.selective_scan``).

    Δ = softplus(dt + dt_bias);  h = exp(Δ A) h + Δ B x;  y = (C · h + D x) * silu(z).

    Args:
      h: (b, d, n) state.   x, dt, z: (b, d).   A: (d, n).   B, C: (b, n) or (b, g, n).
      D, dt_bias: (d,).

    Returns:
      y: (b, d) in x.dtype and the new (b, d, n) state in the compute dtype.
    """
    f = compute_dtype(x.dtype, A.dtype)
    dt = dt.astype(f)
    if dt_bias is not None:
        dt = dt + dt_bias.astype(f)
    if dt_softplus:
        dt = jax.nn.softplus(dt)
    if B.ndim == 2:
        B, C = B[:, None], C[:, None]
    per_group = x.shape[-1] // B.shape[1]
    B, C = (jnp.repeat(a.astype(f), per_group, axis=1) for a in (B, C))  # (b, d, n)
    xf = x.astype(f)
    h = jnp.exp(dt[..., None] * A.astype(f)) * h.astype(f) + (dt * xf)[..., None] * B
    y = jnp.sum(C * h, axis=-1)
    if D is not None:
        y = y + D.astype(f) * xf
    if z is not None:
        y = y * jax.nn.silu(z.astype(f))
    return y.astype(x.dtype), h


def selective_scan(
    x, dt, A, B, C, D=None, z=None, *, h0=None, reverse=False, segment_ids=None, **step_options
):
    """Mamba's selective scan: ``selective_state_update`` at every step, in order.

    Args:
      x, dt, z: (b, l, d).   A: (d, n).   B, C: (b, l, n) or (b, l, g, n).
      h0: optional (b, d, n) state before the first step (after the last one if ``reverse``).
      segment_ids: optional (b, l) ints; the state restarts from zero where a segment starts.
      step_options: ``dt_bias``, ``dt_softplus`` of ``selective_state_update``.

    Returns:
      y: (b, l, d) in x.dtype and the (b, d, n) final state in the compute dtype.
    """
    b, length, d = x.shape
    if h0 is None:
        h0 = jnp.zeros((b, d, A.shape[1]), compute_dtype(x.dtype, A.dtype))
    restart = segment_starts(segment_ids, reverse, (b, length))

    def step(h, inputs):
        x_t, dt_t, B_t, C_t, z_t, restart_t = inputs
        h = jnp.where(restart_t[:, None, None], 0, h)
        y_t, h = selective_state_update(h, x_t, dt_t, A, B_t, C_t, D, z_t, **step_options)
        return h, y_t

    time_major = [None if a is None else jnp.swapaxes(a, 0, 1) for a in (x, dt, B, C, z, restart)]
    h, y = jax.lax.scan(step, h0, time_major, reverse=reverse)
    return jnp.swapaxes(y, 0, 1), h


def segment_starts(segment_ids, reverse=False, shape=None):
    """(b, l) bool: True where a new segment starts in the scan's direction (never at its first
    step); all False for ``segment_ids`` None (then ``shape`` gives (b, l))."""
    if segment_ids is None:
        return jnp.zeros(shape, bool)
    previous = jnp.roll(segment_ids, -1 if reverse else 1, axis=1)  # the step before, in order
    return (segment_ids != previous).at[:, -1 if reverse else 0].set(False)


def linear_scan(a, b, *, h0=None, reverse=False, segment_ids=None):
    """The linear recurrence h_t = a_t ⊙ h_{t-1} + b_t, one step at a time.

    Args:
      a: (b, l, ...) like ``b``, or b.shape[2:] (the same at every step and row); real or complex.
      b: (b, l, ...).
      h0: optional (b, ...) state before the first step (after the last one if ``reverse``).
      reverse: run from the end of the sequence to the start.
      segment_ids: optional (b, l) ints; where a new segment starts (in the scan's direction)
        the state restarts from zero: h_t = b_t.

    Returns:
      h: (b, l, ...) every state and the final (b, ...) state, both in the compute dtype
      (complex if a or b is complex).
    """
    dtype = jnp.result_type(compute_dtype(a.dtype, b.dtype), a.dtype, b.dtype)
    shared = a.ndim < b.ndim
    if h0 is None:
        h0 = jnp.zeros((b.shape[0], *b.shape[2:]), dtype)
    restart = segment_starts(segment_ids, reverse, b.shape[:2])

    def step(h, inputs):
        a_t, b_t, restart_t = inputs
        a_t = a if shared else a_t
        restart_t = restart_t.reshape(restart_t.shape + (1,) * (h.ndim - 1))
        h = jnp.where(restart_t, 0, a_t * h) + b_t
        return h, h

    time_major = [jnp.swapaxes(v, 0, 1) for v in (a if not shared else b, b, restart)]
    time_major = [v.astype(dtype) for v in time_major[:2]] + [time_major[2]]
    a = a.astype(dtype)
    h, hs = jax.lax.scan(step, h0.astype(dtype), time_major, reverse=reverse)
    return jnp.swapaxes(hs, 0, 1), h


def cauchy(v, z, w, conjugate=False):
    """Cauchy matrix-vector product, the (..., k, n) matrix materialized.

    r[..., k] = sum_n v[..., n] / (z[..., k] - w[..., n]), plus the same for (conj v, conj w) when
    ``conjugate`` (the conjugate half of a conjugate-symmetric sum). v, z, w broadcast over ``...``.
    """
    terms = v[..., None, :] / (z[..., :, None] - w[..., None, :])
    if conjugate:
        terms = terms + jnp.conj(v)[..., None, :] / (z[..., :, None] - jnp.conj(w)[..., None, :])
    return jnp.sum(terms, axis=-1)


def dplr_kernel(Lambda, P, B, C, log_dt, length):
    """K[c, h, l] = C Ā^l B̄ of the DPLR SSM A = Λ − P Pᴴ built densely, one power per step.

    Λ (h, n2), P (r, h, n2), B (h, n2), C (c, h, n2) complex stored halves of the conjugate-
    symmetric full basis; bilinear Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A), B̄ = (I − Δ/2 A)⁻¹ Δ B.
    """
    dtype = complex_dtype(Lambda.dtype, P.dtype, B.dtype, C.dtype, log_dt.dtype)

    def both(x):
        x = x.astype(dtype)
        return jnp.concatenate([x, jnp.conj(x)], axis=-1)

    Lf, Pf, Bf, Cf = both(Lambda), both(P), both(B), both(C)
    A = jax.vmap(jnp.diag)(Lf) - jnp.einsum("rhn,rhm->hnm", Pf, jnp.conj(Pf), precision=HIGHEST)
    dt = jnp.exp(log_dt.astype(Lf.real.dtype))[:, None, None]
    eye = jnp.eye(Lf.shape[-1], dtype=dtype)
    dA = jnp.linalg.solve(eye - dt / 2 * A, eye + dt / 2 * A)  # (h, N, N)
    dB = jnp.linalg.solve(eye - dt / 2 * A, (dt[..., 0] * Bf)[..., None])[..., 0]  # (h, N)

    def power(x, _):
        return jnp.einsum("hnm,hm->hn", dA, x, precision=HIGHEST), x

    _, states = jax.lax.scan(power, dB, None, length=length)  # (l, h, N)
    return jnp.einsum("chn,lhn->chl", Cf, states, precision=HIGHEST).real
