"""Slow, obviously-correct, step-by-step versions of every op. Tests compare fast paths to these."""

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # references are exact float32 on every backend


def diagonal_ssm_scan(dA, dB, C, D, u, h0=None):
    """Run a discrete diagonal SSM one step at a time.

    x_t = Ā x_{t-1} + dB u_t;  y_t = 2 Re(C x_t) + D u_t  (the conjugate half is implicit).

    Args:
      dA: (h, n2) complex Ā.   dB: (h, n2) complex.   C: (c, h, n2) complex.   D: (c, h) real.
      u: (b, l, h) real input.   h0: optional (b, h, n2) complex initial state.

    Returns:
      y: (b, l, c, h) float32 and the final state (b, h, n2).
    """
    b = u.shape[0]
    if h0 is None:
        h0 = jnp.zeros((b, *dA.shape), jnp.complex64)

    def step(x, u_t):  # u_t: (b, h)
        x = dA * x + dB * u_t[..., None]
        y = 2.0 * jnp.einsum("chn,bhn->bch", C, x, precision=HIGHEST).real + D * u_t[:, None, :]
        return x, y

    x, ys = jax.lax.scan(step, h0, jnp.swapaxes(u.astype(jnp.float32), 0, 1))
    return jnp.swapaxes(ys, 0, 1), x


def causal_conv(u, k):
    """y[t] = sum_{s<=t} k[t-s] u[s] by an explicit Toeplitz sum.  u: (b, l, ...), k: (l, ...)."""
    length = u.shape[1]
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]  # (t, s)
    toeplitz = jnp.where((lag >= 0)[(...,) + (None,) * (k.ndim - 1)], k[jnp.clip(lag, 0)], 0.0)
    return jnp.einsum("ts...,bs...->bt...", toeplitz, u.astype(jnp.float32), precision=HIGHEST)


def bidirectional_conv(u, k, k_reverse):
    """Causal conv with k plus the causal conv of the reversed sequence with k_reverse, reversed."""
    return causal_conv(u, k) + causal_conv(u[:, ::-1], k_reverse)[:, ::-1]


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
    return_state=False,
):
    """Mamba's selective scan, one time step at a time (see ``ssm.ops.selective_scan``).

    Δ = softplus(dt + dt_bias);  h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t;
    y_t = C_t · h_t + D x_t, times silu(z_t).

    Args:
      x, dt, z: (b, l, d).   A: (d, n).   B, C: (b, l, n) or (b, l, g, n).   D, dt_bias: (d,).
      h0: optional (b, d, n) state before the first step (after the last one if ``reverse``).

    Returns:
      y: (b, l, d) in x.dtype, and the (b, d, n) float32 final state if ``return_state``.
    """
    b, _, d = x.shape
    f32 = jnp.float32
    dt = dt.astype(f32)
    if dt_bias is not None:
        dt = dt + dt_bias.astype(f32)
    if dt_softplus:
        dt = jax.nn.softplus(dt)
    if B.ndim == 3:
        B, C = B[:, :, None], C[:, :, None]
    per_group = d // B.shape[2]
    A = A.astype(f32)
    h = jnp.zeros((b, *A.shape), f32) if h0 is None else h0.astype(f32)

    def step(h, inputs):  # x_t, dt_t: (b, d); B_t, C_t: (b, g, n)
        x_t, dt_t, B_t, C_t = inputs
        B_t = jnp.repeat(B_t, per_group, axis=1)  # (b, d, n)
        C_t = jnp.repeat(C_t, per_group, axis=1)
        h = jnp.exp(dt_t[..., None] * A) * h + (dt_t * x_t)[..., None] * B_t
        return h, jnp.sum(C_t * h, axis=-1)

    time_major = [jnp.swapaxes(a.astype(f32), 0, 1) for a in (x, dt, B, C)]
    h, y = jax.lax.scan(step, h, time_major, reverse=reverse)
    y = jnp.swapaxes(y, 0, 1)
    if D is not None:
        y = y + D.astype(f32) * x.astype(f32)
    if z is not None:
        y = y * jax.nn.silu(z.astype(f32))
    y = y.astype(x.dtype)
    return (y, h) if return_state else y
