"""Numerical conventions shared by every op: exact matmul precision and the compute dtype."""

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # full float32 (no TF32 on GPUs): SSM math stays exact


def compute_dtype(*dtypes):
    """The real dtype ops compute in: float64 if any input is float64 (x64 on), else float32."""
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def complex_dtype(*dtypes):
    """The complex counterpart of ``compute_dtype``: complex128 or complex64."""
    return jnp.promote_types(compute_dtype(*dtypes), jnp.complex64)
