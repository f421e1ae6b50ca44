import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import LRU


def inputs(b=2, length=30, h=5, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, length, h))


@nnx.jit(static_argnames="return_state")
def forward(layer, x, state=None, return_state=False):
    return layer(x, state=state, return_state=return_state)


def numpy_parameters(layer):
    """λ (n,), γ (n,), B (n, h), C (directions, h, n) complex128 and D (h,) from the layer."""
    p = {k: np.asarray(getattr(layer, k)[...], np.float64) for k in ("B", "C", "D")}
    nu, theta, gamma_log = (
        np.asarray(getattr(layer, k)[...], np.float64) for k in ("nu_log", "theta_log", "gamma_log")
    )
    lam = np.exp(-np.exp(nu) + 1j * np.exp(theta))
    B = p["B"][..., 0] + 1j * p["B"][..., 1]
    C = p["C"][..., 0] + 1j * p["C"][..., 1]
    return lam, np.exp(gamma_log), B, C, p["D"]


def numpy_lru(layer, x, h0=None, reverse=False, direction=0):
    """Re(C h_t) for h_t = λ h_{t-1} + γ (B u_t), one step at a time in complex128."""
    lam, gamma, B, C, _ = numpy_parameters(layer)
    u = np.asarray(x, np.float64)
    b, length, _ = u.shape
    h = np.zeros((b, lam.size), complex) if h0 is None else np.asarray(h0, complex)
    y = np.zeros(u.shape)
    for t in reversed(range(length)) if reverse else range(length):
        h = lam * h + gamma * (u[:, t] @ B.T)
        y[:, t] = (h @ C[direction].T).real
    return y, h


@pytest.mark.parametrize(
    "r_min, r_max, max_phase, seed",
    [(0.0, 0.99, 2 * math.pi, 0), (0.5, 0.9, math.pi, 1), (0.999, 0.9999, math.pi / 10, 2)],
)
def test_lru_ring_init_puts_eigenvalues_on_the_ring_and_phases_in_range(
    r_min, r_max, max_phase, seed
):
    layer = LRU(4, d_state=512, r_min=r_min, r_max=r_max, max_phase=max_phase, rngs=nnx.Rngs(seed))
    lam, *_ = numpy_parameters(layer)
    radius, phase = np.abs(lam), np.exp(np.asarray(layer.theta_log[...], np.float64))
    assert radius.min() >= r_min * (1 - 1e-6) and radius.max() <= r_max * (1 + 1e-6)
    assert phase.min() >= 0 and phase.max() <= max_phase * (1 + 1e-6)
    # |λ|² and the phase are uniform: their means sit in the middle of their ranges
    width2 = r_max**2 - r_min**2
    assert abs(np.mean(radius**2) - (r_min**2 + r_max**2) / 2) < 0.1 * width2
    assert abs(np.mean(phase) - max_phase / 2) < 0.1 * max_phase
    assert np.all(np.isfinite(np.asarray(layer.nu_log[...])))


@pytest.mark.parametrize("r_min, r_max", [(0.0, 0.99), (0.9, 0.999), (0.999, 0.9999)])
def test_lru_gamma_is_the_normalization_sqrt_one_minus_radius_squared_at_init(r_min, r_max):
    layer = LRU(4, d_state=256, r_min=r_min, r_max=r_max, rngs=nnx.Rngs(3))
    lam, gamma, *_ = numpy_parameters(layer)
    np.testing.assert_allclose(gamma, np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-4)


def test_lru_input_and_output_matrices_have_the_papers_scale():
    h, n = 64, 256
    layer = LRU(h, d_state=n, rngs=nnx.Rngs(0))
    _, _, B, C, D = numpy_parameters(layer)
    np.testing.assert_allclose(np.var(B.real), 1 / (2 * h), rtol=0.1)
    np.testing.assert_allclose(np.var(C.imag), 1 / n, rtol=0.1)
    assert B.shape == (n, h) and C.shape == (1, h, n) and D.shape == (h,)


def test_lru_parallel_output_matches_a_numpy_complex128_loop():
    layer = LRU(5, d_state=7, r_min=0.4, r_max=0.95, rngs=nnx.Rngs(0))
    x = inputs()
    h0 = jax.random.normal(jax.random.key(4), (2, 7), jnp.complex64)
    y_ref, h_ref = numpy_lru(layer, x, h0)
    y_ref = y_ref + numpy_parameters(layer)[4] * np.asarray(x)
    y, h = forward(layer, x, h0, return_state=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-4)


def test_lru_bidirectional_adds_a_reversed_scan_read_out_by_its_own_c():
    layer = LRU(5, d_state=7, r_min=0.4, r_max=0.95, bidirectional=True, rngs=nnx.Rngs(0))
    x = inputs()
    causal, _ = numpy_lru(layer, x)
    anticausal, _ = numpy_lru(layer, x, reverse=True, direction=1)
    expected = causal + anticausal + numpy_parameters(layer)[4] * np.asarray(x)
    np.testing.assert_allclose(forward(layer, x), expected, rtol=1e-4, atol=1e-4)
    assert not layer.recurrent


@pytest.mark.parametrize("impl", ["reference", "associative", "chunked"])
def test_lru_impl_selects_the_linear_scan_implementation(impl):
    x = inputs()
    layer = LRU(5, d_state=7, impl=impl, rngs=nnx.Rngs(0))
    expected = forward(LRU(5, d_state=7, impl="reference", rngs=nnx.Rngs(0)), x)
    assert layer.impl == impl
    np.testing.assert_allclose(forward(layer, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r_min=0.9, r_max=0.9), r"LRU needs r_min < r_max, got r_min=0.9, r_max=0.9"),
        (dict(r_min=0.95, r_max=0.9), r"LRU needs r_min < r_max"),
        (dict(r_max=1.0), r"r_max=1.0 is not valid; valid: a number in \[0, 1\)"),
        (dict(r_min=-0.1), r"r_min=-0.1 is not valid; valid: a number in \[0, 1\)"),
        (dict(d_state=0), r"LRU d_state=0 is not valid; valid: an integer >= 1"),
        (dict(max_phase=0.0), r"max_phase=0.0 is not valid; valid: a number > 0"),
        (dict(impl="nope"), r"unknown LRU impl 'nope'; valid: auto, associative"),
    ],
)
def test_lru_bad_options_give_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        LRU(4, rngs=nnx.Rngs(0), **kwargs)
    assert "\n" not in str(error.value)
