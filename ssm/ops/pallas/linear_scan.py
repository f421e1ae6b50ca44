"""The linear recurrence h_t = a_t ⊙ h_{t-1} + b_t as a Pallas kernel, real or complex.

Grid (b, d / bd) over the flattened trailing axes d: a program carries bd states through the
sequence in blocks of T steps, each block loaded at once and stepped through in registers (a
static loop; rows are picked and placed by one-hot selects, as the Triton backend has no slices
of in-register arrays), so every step costs O(T·bd) selects and no exponential: exact for any a,
zeros (restarts) and signs included. Complex numbers travel as (real, imaginary) planes, which
Triton needs. A shared a (one per channel) is loaded once.

The backward is the same kernel on reversed time: λ_t = g_t + a_{t+1} λ_{t+1} is a forward scan
of the flipped cotangents with a shifted by one step; then ∂b = λ, ∂a_t = λ_t h_{t-1} and
∂h0 = a_0 λ_0 (JAX's transposes: no conjugates). The residuals are the states the op returns.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from ssm.ops.dispatch import Unsupported

BLOCKS = {"gpu": {"time_block": 16, "d_block": 128}, "cpu": {"time_block": 16, "d_block": 128}}
TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)  # the GPU backend (not Mosaic GPU)


def _multiply(a, h):
    """Elementwise a h of (real,) or (real, imaginary) tuples."""
    if len(a) == 1:
        return (a[0] * h[0],)
    (ar, ai), (hr, hi) = a, h
    return ar * hr - ai * hi, ar * hi + ai * hr


def _kernel(*refs, T, planes, shared):
    """refs: the planes of a ((l, bd), or (bd,) if shared), b (l, bd), h0 (bd,), then those of
    the output h (l, bd)."""
    a_refs, b_refs = refs[:planes], refs[planes : 2 * planes]
    h0_refs, h_refs = refs[2 * planes : 3 * planes], refs[3 * planes :]
    steps = jnp.arange(T)[:, None]
    a_shared = [ref[...] for ref in a_refs] if shared else None

    def pick(block, t):  # row t of a (T, bd) block
        return jnp.sum(jnp.where(steps == t, block, 0), axis=0)

    def block(k, h):
        rows = pl.ds(pl.multiple_of(k * T, T), T)
        b_block = [ref[rows, :] for ref in b_refs]
        a_block = None if shared else [ref[rows, :] for ref in a_refs]
        out = [jnp.zeros_like(plane) for plane in b_block]
        for t in range(T):
            a_t = a_shared if shared else [pick(plane, t) for plane in a_block]
            b_t = [pick(plane, t) for plane in b_block]
            h = tuple(ah + b for ah, b in zip(_multiply(a_t, h), b_t, strict=True))
            out = [jnp.where(steps == t, new[None], o) for new, o in zip(h, out, strict=True)]
        for ref, plane in zip(h_refs, out, strict=True):
            ref[rows, :] = plane
        return h

    jax.lax.fori_loop(0, h_refs[0].shape[0] // T, block, tuple(ref[...] for ref in h0_refs))


def _planes(x):
    return (x.real, x.imag) if jnp.iscomplexobj(x) else (x,)


def _join(planes):
    return planes[0] if len(planes) == 1 else jax.lax.complex(*planes)


def _forward(a, b, h0, config):
    """Every state (b, l, d) of the padded scan."""
    T, bd, interpret = config
    batch, length, d = b.shape
    shared = a.ndim == 1
    planes = 2 if jnp.iscomplexobj(b) else 1
    seq = pl.BlockSpec((None, length, bd), lambda i, j: (i, 0, j))
    state = pl.BlockSpec((None, bd), lambda i, j: (i, j))
    a_spec = pl.BlockSpec((bd,), lambda i, j: (j,)) if shared else seq
    outputs = pl.pallas_call(
        functools.partial(_kernel, T=T, planes=planes, shared=shared),
        grid=(batch, d // bd),
        in_specs=[a_spec] * planes + [seq] * planes + [state] * planes,
        out_specs=[seq] * planes,
        out_shape=[jax.ShapeDtypeStruct(b.shape, b.real.dtype)] * planes,
        interpret=interpret,
        compiler_params=TRITON,
    )(*_planes(a), *_planes(b), *_planes(h0))
    return _join(outputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _scan(a, b, h0, config):
    return _forward(a, b, h0, config)


def _scan_forward(a, b, h0, config):
    hs = _forward(a, b, h0, config)
    return hs, (a, h0, hs)


def _scan_backward(config, residuals, g):
    a, h0, hs = residuals
    if a.ndim == 1:
        shifted = a  # its first step multiplies the zero start: λ'_0 = g_{l-1}
    else:  # step t of the reversed scan applies a_{t+1}
        shifted = jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)
        shifted = jnp.flip(shifted, axis=1)
    lam = jnp.flip(_forward(shifted, jnp.flip(g, axis=1), jnp.zeros_like(h0), config), axis=1)
    g_a = lam * jnp.concatenate([h0[:, None], hs[:, :-1]], axis=1)  # λ_t h_{t-1}
    if a.ndim == 1:
        return g_a.sum(axis=(0, 1)), lam, a * lam[:, 0]
    return g_a, lam, a[:, 0] * lam[:, 0]


_scan.defvjp(_scan_forward, _scan_backward)


def linear_scan(a, b, h0, *, time_block=None, d_block=None, interpret=None):
    """The ``LINEAR_SCAN`` implementation signature (see ``ssm.ops.linear_scan``).

    Args:
      a: (b, l, ...) like b, or b.shape[2:] (shared).   b: (b, l, ...).   h0: (b, ...).
      time_block: T steps per block; d_block: channels per program (powers of two; default
        ``BLOCKS``).   interpret: run in the Pallas interpreter (default: on CPU).

    Returns:
      (b, l, ...) every state and the (b, ...) last one.
    """
    platform = jax.default_backend()
    interpret = platform == "cpu" if interpret is None else interpret
    if not interpret and platform != "gpu":
        raise Unsupported(f"the Pallas linear scan is compiled for GPUs only, not {platform}")
    blocks = BLOCKS.get(platform, BLOCKS["gpu"])
    batch, length, *trailing = b.shape
    d = math.prod(trailing)
    T = time_block or blocks["time_block"]
    bd = min(d_block or blocks["d_block"], pl.next_power_of_2(d))
    for name, value in (("time_block", T), ("d_block", bd)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"linear_scan pallas: {name} must be a power of two, got {value}")
    padded_length, padded_d = math.ceil(length / T) * T, math.ceil(d / bd) * bd

    def pad(x, time=True):  # (b, [l,] ...) -> (b, [l_padded,] d_padded)
        x = x.reshape(*x.shape[: 2 if time else 1], d)
        widths = [(0, 0), (0, padded_length - length)] if time else [(0, 0)]
        return jnp.pad(x, widths + [(0, padded_d - d)])

    shared = a.ndim < b.ndim
    a = jnp.pad(a.reshape(d), (0, padded_d - d)) if shared else pad(a)
    hs = _scan(a, pad(b), pad(h0, time=False), (T, bd, bool(interpret)))[:, :length, :d]
    hs = hs.reshape(b.shape)
    return hs, hs[:, -1]
