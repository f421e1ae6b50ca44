import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.init import s4d_diagonal
from ssm.ops import diagonal_ssm_step, discretize_diagonal, long_conv, reference, vandermonde_kernel
from ssm.ops.conv import LONG_CONV

CONV_IMPLS = [name for name in LONG_CONV.names() if name != "auto"]  # the live registry

TOL = {jnp.float32: dict(rtol=1e-4, atol=1e-4), jnp.bfloat16: dict(rtol=2e-2, atol=2e-2)}
GRAD_TOL = {jnp.float32: dict(rtol=1e-3, atol=1e-3), jnp.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def random_diagonal_ssm(init, d_state=16, h=3, c=2, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    A = jnp.broadcast_to(jnp.asarray(s4d_diagonal(init, d_state), jnp.complex64), (h, d_state // 2))
    B = jax.random.normal(k1, (h, d_state // 2), jnp.complex64)
    C = jax.random.normal(k2, (c, h, d_state // 2), jnp.complex64)
    log_dt = jax.random.uniform(k3, (h,), minval=np.log(1e-3), maxval=np.log(1e-1))
    return A, B, C, log_dt


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real"])
def test_vandermonde_kernel_matches_unrolled_recurrence(init, disc):
    length = 50
    A, B, C, log_dt = random_diagonal_ssm(init)
    log_dA, dB = discretize_diagonal(A, B, log_dt, disc)
    kernel = vandermonde_kernel(log_dA, dB, C, length)  # (c, h, l)
    impulse = jnp.zeros((1, length, A.shape[0])).at[:, 0].set(1.0)
    D = jnp.zeros(C.shape[:2])
    response, _ = reference.diagonal_ssm_scan(jnp.exp(log_dA), dB, C, D, impulse)  # (1, l, c, h)
    np.testing.assert_allclose(kernel, response[0].transpose(1, 2, 0), rtol=1e-4, atol=1e-5)


def test_zoh_discretization_matches_matrix_exponential():
    A, B, _, log_dt = random_diagonal_ssm("lin", d_state=4, h=1)
    log_dA, dB = discretize_diagonal(A, B, log_dt, "zoh")
    dt = np.exp(float(log_dt[0]))
    a, b = complex(A[0, 1]), complex(B[0, 1])
    np.testing.assert_allclose(complex(jnp.exp(log_dA[0, 1])), np.exp(dt * a), rtol=1e-5)
    # dB = ∫_0^Δ exp(sA) ds · B, by the trapezoid rule on a fine grid.
    s = np.linspace(0.0, dt, 20001)
    np.testing.assert_allclose(complex(dB[0, 1]), np.trapezoid(np.exp(s * a), s) * b, rtol=1e-5)


def test_discretize_unknown_method_names_valid_choices():
    A, B, _, log_dt = random_diagonal_ssm("lin")
    with pytest.raises(ValueError, match="valid: zoh, bilinear"):
        discretize_diagonal(A, B, log_dt, "euler")


def conv_inputs(dtype, length=37, kernel_length=None, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    kernel_length = kernel_length or length
    u = jax.random.normal(k1, (2, length, 3)).astype(dtype)
    k = (jax.random.normal(k2, (kernel_length, 3)) / kernel_length).astype(dtype)
    k_rev = (jax.random.normal(k3, (kernel_length, 3)) / kernel_length).astype(dtype)
    return u, k, k_rev


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_long_conv_causal_matches_reference(dtype, impl):
    u, k, _ = conv_inputs(dtype)
    y = long_conv(u, k, impl=impl)
    np.testing.assert_allclose(y, reference.causal_conv(u, k), **TOL[dtype])


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_long_conv_bidirectional_matches_reference(dtype, impl):
    u, k, k_rev = conv_inputs(dtype)
    np.testing.assert_allclose(
        long_conv(u, k, k_rev, impl=impl), reference.bidirectional_conv(u, k, k_rev), **TOL[dtype]
    )


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_long_conv_short_kernel_is_zero_padded(impl):
    u, k, k_rev = conv_inputs(jnp.float32, length=20, kernel_length=7)
    padded = jnp.pad(k, ((0, 13), (0, 0)))
    np.testing.assert_allclose(
        long_conv(u, k, impl=impl), reference.causal_conv(u, padded), atol=1e-5
    )


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_long_conv_and_kernels_compute_float64_inputs_in_float64(impl):
    with jax.enable_x64(True):
        u, k, k_rev = (a.astype(jnp.float64) for a in conv_inputs(jnp.float32))
        y = long_conv(u, k, k_rev, impl=impl)
        expected = reference.bidirectional_conv(u, k, k_rev)
        A, B, C, log_dt = random_diagonal_ssm("lin")
        log_dA, dB = discretize_diagonal(
            A.astype(jnp.complex128), B.astype(jnp.complex128), log_dt.astype(jnp.float64)
        )
        kernel = vandermonde_kernel(log_dA, dB, C.astype(jnp.complex128), 10)
    assert y.dtype == jnp.float64 and kernel.dtype == jnp.float64
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_long_conv_unknown_impl_names_the_valid_ones():
    u, k, _ = conv_inputs(jnp.float32)
    with pytest.raises(
        ValueError, match="unknown long_conv impl 'fast'; valid: auto, fft, reference$"
    ):
        long_conv(u, k, impl="fast")


def test_diagonal_ssm_step_is_one_step_of_the_recurrence_in_numpy():
    rng = np.random.default_rng(0)
    b, h, n2, c = 2, 3, 4, 2

    def complex_normal(*shape):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    state, dA, dB, C = (
        complex_normal(b, h, n2),
        complex_normal(h, n2),
        complex_normal(h, n2),
        complex_normal(c, h, n2),
    )
    u, D = rng.standard_normal((b, h)), rng.standard_normal((c, h))
    new_state = dA * state + dB * u[..., None]
    y = 2 * np.einsum("chn,bhn->bch", C, new_state).real + D * u[:, None]
    args = [jnp.asarray(a, jnp.complex64) for a in (state,)] + [jnp.asarray(u, jnp.float32)]
    args += [jnp.asarray(a, jnp.complex64) for a in (dA, dB, C)] + [jnp.asarray(D, jnp.float32)]
    y_op, state_op = jax.jit(diagonal_ssm_step)(*args)
    np.testing.assert_allclose(state_op, new_state, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_op, y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="diagonal_ssm_step: want h"):
        diagonal_ssm_step(args[0][:, :2], *args[1:])


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_long_conv_matches_reference_grad(dtype, bidirectional, impl):
    u, k, k_rev = conv_inputs(dtype, length=16)
    w = jax.random.normal(jax.random.key(9), (2, 16, 3))

    def loss(fn):
        def f(u, k, k_rev):
            y = fn(u, k, k_rev) if bidirectional else fn(u, k)
            return jnp.sum(y * w)

        return jax.grad(f, argnums=(0, 1, 2))(u, k, k_rev)

    ref = reference.bidirectional_conv if bidirectional else reference.causal_conv
    conv = functools.partial(long_conv, impl=impl)
    for fast, slow in zip(loss(conv), loss(ref), strict=True):
        np.testing.assert_allclose(
            fast.astype(jnp.float32), slow.astype(jnp.float32), **GRAD_TOL[dtype]
        )
