"""The Cauchy kernel of S4: r_k = sum_n v_n / (z_k - w_n), behind one dispatch point.

``cauchy(v, z, w, conjugate=True)`` adds the conjugate terms conj(v_n) / (z_k - conj(w_n)), so a
conjugate-symmetric sum over 2n terms is computed from its n stored halves (S4's ``cauchy_conj``).
Implementations share the signature ``impl(v, z, w, conjugate, *, <options>) -> r`` on
complex v (..., n), z (..., k), w (..., n) broadcast over the leading dims:

- ``reference``: the (..., k, n) matrix materialized (``ssm.ops.reference.cauchy``);
- ``chunked``: ``chunk_size`` values of z at a time under ``lax.map`` with each chunk
  rematerialized, so neither the forward nor the backward ever holds the whole (k, n) matrix.

Math is complex64 (complex128 for 64-bit inputs).
"""

import jax
import jax.numpy as jnp

from ssm.ops import reference
from ssm.ops.dispatch import Op
from ssm.ops.numerics import complex_dtype

CAUCHY = Op("cauchy", auto=lambda platform, v, z, w, conjugate: "chunked")
CAUCHY.register("reference")(reference.cauchy)


@CAUCHY.register("chunked")
def _chunked(v, z, w, conjugate, *, chunk_size: int = 256):
    if chunk_size < 1:
        raise ValueError(f"cauchy chunk_size must be >= 1, got {chunk_size}")
    k = z.shape[-1]
    if k <= chunk_size:
        return reference.cauchy(v, z, w, conjugate)
    chunks = -(-k // chunk_size)
    z = jnp.pad(z, [(0, 0)] * (z.ndim - 1) + [(0, chunks * chunk_size - k)])
    z = jnp.moveaxis(z.reshape(*z.shape[:-1], chunks, chunk_size), -2, 0)
    block = jax.checkpoint(lambda zc: reference.cauchy(v, zc, w, conjugate))
    r = jax.lax.map(block, z)  # (chunks, ..., chunk_size)
    return jnp.moveaxis(r, 0, -2).reshape(*r.shape[1:-1], -1)[..., :k]


def cauchy(v, z, w, *, conjugate: bool = False, impl: CAUCHY.impl_type = "auto", **options):
    """r[..., k] = sum_n v_n / (z_k - w_n) (+ conj(v_n) / (z_k - conj(w_n)) if ``conjugate``).

    Args:
      v: (..., n) complex numerators.   z: (..., k) evaluation points.   w: (..., n) poles.
        The leading dims broadcast.
      conjugate: also sum the conjugate half (S4's conjugate-symmetric sum over 2n terms).
      impl: "auto" or a name in ``CAUCHY``; ``options`` go to it (``chunk_size``).

    Returns:
      (..., k) complex64 (complex128 for 64-bit inputs).
    """
    if v.shape[-1] != w.shape[-1]:
        raise ValueError(f"cauchy: v (..., n) and w (..., n) differ in n: {v.shape} vs {w.shape}")
    dtype = complex_dtype(v.dtype, z.dtype, w.dtype)
    v, z, w = (jnp.asarray(a, dtype) for a in (v, z, w))
    return CAUCHY(impl, v, z, w, conjugate, options=options)
