"""DSS against complex128 NumPy versions of the paper's formulas (Gupta, Gu & Berant 2022)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import DSS, NoRecurrentState
from ssm.ops import reference


def inputs(b=2, length=40, h=6, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, length, h))


def numpy_params(layer):
    """(Λ (h, n2), Δ (h,), W (c, h, n2)) of a layer in complex128 / float64."""
    A = np.asarray(layer.state_matrix(), np.complex128)
    W = np.asarray(layer.W[...], np.float64)
    return A, np.exp(np.asarray(layer.log_dt[...], np.float64)), W[..., 0] + 1j * W[..., 1]


def exp_kernel_numpy(A, dt, W, length):
    """K_k = Re(Σ_n w (e^{ΛΔ} - 1)/Λ e^{ΛΔk}) with w = 2W, (c, h, l)."""
    dtA = dt[:, None] * A
    powers = np.exp(dtA[..., None] * np.arange(length))  # (h, n2, l)
    return np.einsum("chn,hnl->chl", 2 * W * (np.exp(dtA) - 1) / A, powers).real


def softmax_kernel_numpy(A, dt, W, length):
    """K_k = Re(Σ_n w/Λ softmax_k(ΛΔk)) with w = 2W; the softmax summed term by term."""
    P = (dt[:, None] * A)[..., None] * np.arange(length)  # (h, n2, l)
    E = np.exp(P - P.real.max(axis=-1, keepdims=True))
    S = E / E.sum(axis=-1, keepdims=True)
    return np.einsum("chn,hnl->chl", 2 * W / A, S).real


def assert_kernel_close(actual, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def with_real_parts(layer, real):
    """Set a softmax layer's Re Λ (n2,) (the paper lets it be positive)."""
    layer.A_real[...] = jnp.asarray(real, jnp.float32)
    return layer


def test_dss_exp_kernel_matches_the_papers_formula():
    layer = DSS(6, d_state=16, channels=3, dt_min=0.01, dt_max=0.5, rngs=nnx.Rngs(0))
    expected = exp_kernel_numpy(*numpy_params(layer), 50)
    assert_kernel_close(layer.kernel(50), expected)


def test_dss_softmax_kernel_matches_the_papers_row_softmax_for_both_signs_of_re_lambda():
    options = dict(d_state=8, channels=2, kernel="softmax", dt_min=0.01, dt_max=0.5)
    layer = DSS(6, **options, rngs=nnx.Rngs(0))
    with_real_parts(layer, [-0.5, 0.3, -2.0, 1.0])
    expected = softmax_kernel_numpy(*numpy_params(layer), 50)
    assert_kernel_close(layer.kernel(50), expected)


def test_dss_softmax_is_exp_with_w_scaled_by_exp_l_lambda_dt_minus_one():
    """Proposition 1: for Re Λ < 0 the softmax kernel of w is the exp kernel of w/(e^{LΛΔ} - 1)."""
    length = 30
    exp = DSS(4, d_state=8, dt_min=0.05, dt_max=0.5, rngs=nnx.Rngs(0))
    softmax = DSS(4, d_state=8, kernel="softmax", dt_min=0.05, dt_max=0.5, rngs=nnx.Rngs(0))
    A, dt, W = numpy_params(exp)
    W_softmax = W * (np.exp(length * dt[:, None] * A) - 1)
    softmax.W[...] = jnp.stack([W_softmax.real, W_softmax.imag], -1).astype(jnp.float32)
    np.testing.assert_allclose(softmax.kernel(length), exp.kernel(length), rtol=1e-4, atol=1e-5)


def test_dss_softmax_is_finite_and_exact_at_length_16384_with_large_steps():
    length = 16384
    layer = DSS(2, d_state=8, kernel="softmax", dt_min=5.0, dt_max=20.0, rngs=nnx.Rngs(0))
    with_real_parts(layer, [-0.5, 0.5, -4.0, 4.0])  # |Re ΛΔ k| up to 1.3e6: e^{ΛΔk} overflows
    k = layer.kernel(length)
    assert bool(jnp.all(jnp.isfinite(k)))
    expected = softmax_kernel_numpy(*numpy_params(layer), length)
    np.testing.assert_allclose(k, expected, atol=1e-4 * abs(expected).max())
    x = inputs(b=1, length=length, h=2)
    grads = nnx.grad(lambda layer: jnp.mean(layer(x) ** 2))(layer)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_dss_softmax_normalizes_each_row_over_its_valid_length():
    layer = DSS(3, d_state=8, kernel="softmax", dt_min=0.05, rngs=nnx.Rngs(0))
    with_real_parts(layer, [-0.5, 0.3, -1.0, 1.0])
    rows = layer.kernel(12, jnp.array([5, 12]))  # (b, c, h, l)
    np.testing.assert_allclose(rows[0, ..., :5], layer.kernel(5), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows[0, ..., 5:], 0.0)
    np.testing.assert_allclose(rows[1], layer.kernel(12), rtol=1e-5, atol=1e-6)


def test_dss_exp_parallel_and_state_match_a_numpy_recurrence():
    layer = DSS(6, d_state=16, channels=3, rngs=nnx.Rngs(0))
    x = inputs()
    h0 = np.asarray(jax.random.normal(jax.random.key(5), (2, 6, 8), jnp.complex64))
    A, dt, W = numpy_params(layer)
    dA, dB = np.exp(dt[:, None] * A), (np.exp(dt[:, None] * A) - 1) / A  # ZOH with B = 1
    D, u = np.asarray(layer.D[...], np.float64), np.asarray(x, np.float64)
    h, ys = h0.astype(np.complex128), []
    for t in range(x.shape[1]):
        h = dA * h + dB * u[:, t, :, None]
        ys.append(2 * np.einsum("chn,bhn->bch", W, h).real + D * u[:, t, None])
    expected = np.stack(ys, 1).reshape(2, 40, 18)
    y, state = layer(x, state=jnp.asarray(h0), return_state=True)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state, h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer(x), layer(x, state=jnp.zeros_like(h0)), atol=1e-6)


def test_dss_softmax_bidirectional_matches_its_definition():
    layer = DSS(6, d_state=16, channels=2, kernel="softmax", bidirectional=True, rngs=nnx.Rngs(0))
    x = inputs()
    k = layer.kernel(x.shape[1])  # (2 * channels, h, l)
    k_fwd, k_bwd = k[:2].transpose(2, 0, 1), k[2:].transpose(2, 0, 1)  # (l, c, h)
    u = x[:, :, None, :]
    expected = reference.bidirectional_conv(u, k_fwd, k_bwd) + layer.D[...] * u
    np.testing.assert_allclose(layer(x), expected.reshape(2, 40, 12), rtol=1e-4, atol=1e-4)


def test_dss_lambda_starts_at_the_skew_hippo_eigenvalues():
    """The authors' init: eigenvalues of the skew part of HiPPO-LegS, minus 1/2, Im > 0."""
    n = 16
    q = np.sqrt(2 * np.arange(n) + 1.0)
    hippo = np.tril(np.outer(q, q), -1)
    eigenvalues = np.linalg.eigvals((hippo - hippo.T) / 2) - 0.5
    positive = eigenvalues[eigenvalues.imag > 0]
    expected = positive[np.argsort(positive.imag)]
    for kernel in ("exp", "softmax"):
        layer = DSS(3, d_state=n, kernel=kernel, rngs=nnx.Rngs(0))
        A = np.asarray(layer.state_matrix())
        assert A.shape == (3, n // 2)
        np.testing.assert_allclose(A[0][np.argsort(A[0].imag)], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(A, np.broadcast_to(A[0], A.shape))  # shared by channels


def test_dss_softmax_has_no_recurrent_state_and_says_why():
    layer = DSS(4, d_state=8, kernel="softmax", rngs=nnx.Rngs(0))
    assert not layer.recurrent
    with pytest.raises(NoRecurrentState, match="normalized over the sequence length") as error:
        layer.initial_state(2)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel="fft"), "unknown DSS kernel 'fft'; valid: exp, softmax"),
        (dict(d_state=7), "DSS d_state=7 is not valid; valid: an integer >= 2 divisible by 2"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min <= dt_max"),
        (dict(channels=0), "channels=0 is not valid; valid: an integer >= 1"),
        (dict(init="hippo"), "valid: legs, legt, lagt, fout, lin, inv, real"),
        (dict(impl="nope"), "unknown DSS impl 'nope'; valid: auto"),
    ],
)
def test_dss_bad_options_give_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        DSS(4, rngs=nnx.Rngs(0), **kwargs)
    assert "\n" not in str(error.value)
