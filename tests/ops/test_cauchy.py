"""Every Cauchy implementation equals the reference, which equals a complex128 NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.ops import reference
from ssm.ops.cauchy import CAUCHY, cauchy

IMPLS = [name for name in CAUCHY.names() if name != "auto"]  # the live registry
OPTIONS = {"chunked": {"chunk_size": 8}}  # several chunks and a ragged tail of z
TOLERANCE = {"out": 1e-5, "grad": 1e-4}  # complex64, relative to the largest value


def make_inputs(seed, lead=(3,), n=6, k=29):
    rng = np.random.default_rng(seed)

    def cplx(*shape):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    w = -rng.uniform(0.1, 1.0, (*lead, n)) + 1j * rng.uniform(-5, 5, (*lead, n))
    z = 1j * rng.uniform(-10, 10, (*lead, k)) + rng.uniform(0, 1, (*lead, k))
    return cplx(*lead, n), z, w


def numpy_cauchy(v, z, w, conjugate):
    out = np.zeros(z.shape, np.complex128)
    for index in np.ndindex(z.shape[:-1]):
        for j, zj in enumerate(z[index]):
            terms = v[index] / (zj - w[index])
            if conjugate:
                terms = terms + np.conj(v[index]) / (zj - np.conj(w[index]))
            out[index + (j,)] = terms.sum()
    return out


def close(actual, expected, tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, atol=tol * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("conjugate", [False, True])
def test_reference_equals_a_numpy_loop(conjugate):
    v, z, w = make_inputs(0)
    with jax.enable_x64(True):
        got = reference.cauchy(*(jnp.asarray(a) for a in (v, z, w)), conjugate)
    close(got, numpy_cauchy(v, z, w, conjugate), 1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("conjugate", [False, True])
def test_every_impl_equals_the_reference_in_outputs_and_gradients(impl, conjugate):
    v, z, w = (jnp.asarray(a, jnp.complex64) for a in make_inputs(1))

    def loss(fn):
        def of(v, z, w):
            r = fn(v, z, w)
            return jnp.sum(jnp.abs(r) ** 2 + r.real)

        return of

    def ours(v, z, w):
        return cauchy(v, z, w, conjugate=conjugate, impl=impl, **OPTIONS.get(impl, {}))

    def expected(v, z, w):
        return reference.cauchy(v, z, w, conjugate)

    close(ours(v, z, w), expected(v, z, w), TOLERANCE["out"])
    got = jax.grad(loss(ours), argnums=(0, 1, 2))(v, z, w)
    want = jax.grad(loss(expected), argnums=(0, 1, 2))(v, z, w)
    for g, e in zip(got, want, strict=True):
        close(g, e, TOLERANCE["grad"])


def test_leading_dims_broadcast():
    v, z, w = make_inputs(2, lead=(2, 3))
    got = cauchy(jnp.asarray(v[:, None]), jnp.asarray(z[0]), jnp.asarray(w[:, None]))
    assert got.shape == (2, 1, 3, 29)  # v, w (2, 1, 3, n) broadcast against z (3, k)
    close(got[:, 0], numpy_cauchy(v, np.broadcast_to(z[0], z.shape), w, False), 1e-5)


def test_chunked_never_builds_the_whole_matrix():
    v, z, w = (jnp.asarray(a, jnp.complex64) for a in make_inputs(3, n=16, k=1000))
    jaxpr = str(jax.make_jaxpr(lambda v: cauchy(v, z, w, impl="chunked", chunk_size=100))(v))
    assert "1000,16" not in jaxpr.replace(" ", "") and "100,16" in jaxpr.replace(" ", "")


def test_mismatched_n_is_one_clear_error():
    v, z, w = make_inputs(4)
    with pytest.raises(ValueError, match=r"cauchy: v \(\.\.\., n\) and w \(\.\.\., n\) differ"):
        cauchy(jnp.asarray(v), jnp.asarray(z), jnp.asarray(w[..., :-1]))


def test_bad_chunk_size_and_unknown_impl_are_one_line_errors():
    v, z, w = (jnp.asarray(a) for a in make_inputs(5))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        cauchy(v, z, w, impl="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="unknown cauchy impl 'fast'; valid: auto, chunked"):
        cauchy(v, z, w, impl="fast")
