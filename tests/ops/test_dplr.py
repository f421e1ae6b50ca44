"""The S4 (DPLR) kernel by Cauchy products equals the dense SSM's kernel; the step equals it too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.ops import reference
from ssm.ops.cauchy import CAUCHY
from ssm.ops.dplr import dplr_kernel, dplr_step, dplr_step_matrices

IMPLS = [name for name in CAUCHY.names() if name != "auto"]
OPTIONS = {"chunked": {"chunk_size": 3}}  # several chunks of frequencies and a ragged tail
TOLERANCE = {"out": 2e-5, "grad": 2e-4}  # complex64 against the dense reference, relative to max


def make_ssm(seed, h=3, n2=4, r=1, c=2):
    rng = np.random.default_rng(seed)

    def cplx(*shape, scale=1.0):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * scale

    Lambda = -rng.uniform(0.1, 1.0, (h, n2)) + 1j * rng.uniform(-4, 4, (h, n2))
    return dict(
        Lambda=Lambda,
        P=cplx(r, h, n2, scale=0.4),
        B=cplx(h, n2),
        C=cplx(c, h, n2),
        log_dt=np.log(rng.uniform(0.05, 0.5, h)),
    )


def numpy_kernel(Lambda, P, B, C, log_dt, length):
    """K_l = C Ā^l B̄ in complex128 from the materialized full-basis matrices."""
    c, h, n2 = C.shape
    K = np.zeros((c, h, length))
    for i in range(h):

        def full(x):
            return np.concatenate([x, np.conj(x)], axis=-1)

        Pf = full(P[:, i])
        A = np.diag(full(Lambda[i])) - Pf.T @ Pf.conj()
        dt, eye = np.exp(log_dt[i]), np.eye(2 * n2)
        dA = np.linalg.solve(eye - dt / 2 * A, eye + dt / 2 * A)
        x = np.linalg.solve(eye - dt / 2 * A, dt * full(B[i]))
        for t in range(length):
            K[:, i, t] = (full(C[:, i]) @ x).real
            x = dA @ x
    return K


def close(actual, expected, tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, atol=tol * np.abs(expected).max(), rtol=0)


def as_jax(ssm, dtype=jnp.complex64):
    real = jnp.finfo(dtype).dtype
    return {k: jnp.asarray(v, real if k == "log_dt" else dtype) for k, v in ssm.items()}


@pytest.mark.parametrize("length", [1, 2, 7, 16])
@pytest.mark.parametrize("rank", [1, 2])
def test_dense_reference_equals_numpy(length, rank):
    ssm = make_ssm(0, r=rank)
    with jax.enable_x64(True):
        got = reference.dplr_kernel(**as_jax(ssm, jnp.complex128), length=length)
    close(got, numpy_kernel(**ssm, length=length), 1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("length", [1, 2, 7, 16])
@pytest.mark.parametrize("rank", [1, 2])
def test_cauchy_kernel_is_exact_for_every_length(impl, length, rank):
    """The C̃ = C (I − Ā^L) correction leaves no aliased tail: exact at odd and even L."""
    ssm = make_ssm(1, r=rank)
    with jax.enable_x64(True):
        got = dplr_kernel(**as_jax(ssm, jnp.complex128), length=length, impl=impl)
    close(got, numpy_kernel(**ssm, length=length), 1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_kernel_gradients_equal_the_dense_reference(impl):
    ssm = as_jax(make_ssm(2, r=2))
    weights = jax.random.normal(jax.random.key(0), (2, 3, 12))

    def loss(kernel_fn):
        return lambda params: jnp.sum(weights * kernel_fn(**params, length=12))

    ours = lambda **p: dplr_kernel(**p, impl=impl, **OPTIONS.get(impl, {}))  # noqa: E731
    close(ours(**ssm, length=12), reference.dplr_kernel(**ssm, length=12), TOLERANCE["out"])
    got = jax.jit(jax.grad(loss(ours)))(ssm)  # jitted: eager op-by-op grads are slow here
    want = jax.jit(jax.grad(loss(reference.dplr_kernel)))(ssm)
    for name in ssm:
        close(got[name], want[name], TOLERANCE["grad"])


def test_batched_B_gives_one_kernel_each():
    ssm = as_jax(make_ssm(3))
    Bs = jnp.stack([ssm["B"], 2.0 * ssm["B"], 1j * ssm["B"]])
    kernel = jax.jit(dplr_kernel, static_argnames="length")
    kernels = kernel(**{**ssm, "B": Bs}, length=9)
    for i, B in enumerate(Bs):
        close(kernels[i], kernel(**{**ssm, "B": B}, length=9), 1e-6)


def test_step_impulse_response_is_the_kernel():
    ssm = as_jax(make_ssm(4, r=2))
    matrices = dplr_step_matrices(ssm["Lambda"], ssm["P"], ssm["B"], ssm["log_dt"])
    x = jnp.zeros((1, *ssm["Lambda"].shape), jnp.complex64)
    response = []
    for t in range(10):
        x = dplr_step(matrices, x, jnp.full((1, 3), 1.0 if t == 0 else 0.0))
        response.append(2.0 * jnp.einsum("chn,bhn->bch", ssm["C"], x).real[0])
    close(jnp.stack(response, -1), numpy_kernel(**make_ssm(4, r=2), length=10), 1e-5)
