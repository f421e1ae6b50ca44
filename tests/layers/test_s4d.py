import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.hippo import ptd_diagonal
from ssm.init import s4d_init
from ssm.layers import S4D
from ssm.ops import reference


def inputs(b=2, length=40, h=6, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, length, h))


def test_s4d_parallel_matches_reference_scan():
    layer = S4D(6, d_state=16, channels=3, rngs=nnx.Rngs(0))
    x = inputs()
    log_dA, dB, C = layer.discrete()
    y_ref, _ = reference.diagonal_ssm_scan(jnp.exp(log_dA), dB, C, layer.D[...], x)
    np.testing.assert_allclose(layer(x), y_ref.reshape(2, 40, 18), rtol=1e-4, atol=1e-4)


def test_s4d_bidirectional_matches_its_definition():
    layer = S4D(6, d_state=16, channels=2, bidirectional=True, rngs=nnx.Rngs(0))
    x = inputs()
    k = layer.kernel(x.shape[1])  # (2 * channels, h, l)
    k_fwd, k_bwd = k[:2].transpose(2, 0, 1), k[2:].transpose(2, 0, 1)  # (l, c, h)
    u = x[:, :, None, :]
    expected = reference.bidirectional_conv(u, k_fwd, k_bwd) + layer.D[...] * u
    np.testing.assert_allclose(layer(x), expected.reshape(2, 40, 12), rtol=1e-4, atol=1e-4)


def test_s4d_is_causal_and_bidirectional_sees_the_future():
    x = inputs()
    x_changed = x.at[:, -1].add(1.0)
    causal = S4D(6, d_state=16, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(causal(x)[:, :-1], causal(x_changed)[:, :-1], atol=1e-5)
    bidir = S4D(6, d_state=16, bidirectional=True, dt_min=0.1, rngs=nnx.Rngs(0))
    assert not np.allclose(bidir(x)[:, 0], bidir(x_changed)[:, 0])


def test_s4d_log_dt_is_initialised_in_range():
    layer = S4D(256, d_state=4, dt_min=1e-3, dt_max=1e-1, rngs=nnx.Rngs(0))
    dt = np.exp(np.asarray(layer.log_dt[...]))
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1 and dt.max() / dt.min() > 20


@pytest.mark.parametrize("init", ["legs", "lin"])
def test_s4d_starts_from_s4d_init_A_and_B_in_every_channel(init):
    layer = S4D(3, d_state=16, init=init, rngs=nnx.Rngs(0))
    A, B = s4d_init(init, 16)
    A_layer = -np.exp(np.asarray(layer.log_A_real[...])) + 1j * np.asarray(layer.A_imag[...])
    B_layer = np.asarray(layer.B[..., 0]) + 1j * np.asarray(layer.B[..., 1])
    np.testing.assert_allclose(A_layer, np.broadcast_to(A, (3, 8)), rtol=1e-6)
    np.testing.assert_allclose(B_layer, np.broadcast_to(B, (3, 8)), rtol=1e-6)
    assert init != "legs" or np.ptp(np.abs(B_layer)) > 0.5  # LegS's B is not all ones


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_state=7), "S4D d_state=7 is not valid; valid: an integer >= 2 divisible by 2"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min <= dt_max"),
        (
            dict(init="hippo"),
            "^unknown S4D init 'hippo'; valid: legs, legt, lagt, fout, lin, inv, real, ptd$",
        ),
    ],
)
def test_s4d_bad_options_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S4D(4, rngs=nnx.Rngs(0), **kwargs)


def test_s4d_state_in_and_out_match_the_reference_scan_from_that_state():
    layer = S4D(6, d_state=16, channels=3, rngs=nnx.Rngs(0))
    x = inputs()
    h0 = jax.random.normal(jax.random.key(5), (2, 6, 8), jnp.complex64)
    log_dA, dB, C = layer.discrete()
    y_ref, h_ref = reference.diagonal_ssm_scan(jnp.exp(log_dA), dB, C, layer.D[...], x, h0)
    y, h = layer(x, state=h0, return_state=True)
    np.testing.assert_allclose(y, y_ref.reshape(2, 40, 18), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-4)


def test_s4d_impl_selects_the_long_conv_implementation():
    x = inputs()
    fft = S4D(6, d_state=16, impl="fft", rngs=nnx.Rngs(0))
    direct = S4D(6, d_state=16, impl="reference", rngs=nnx.Rngs(0))
    assert (fft.impl, direct.impl) == ("fft", "reference")
    np.testing.assert_allclose(fft(x), direct(x), rtol=1e-4, atol=1e-4)


def test_s4d_ptd_starts_from_the_kernel_of_perturbed_hippo_legs_and_steps_its_own_state():
    """S4-PTD: the float32 kernel at init is that of ``ptd_diagonal``'s system (Λ, B̃, C W) for
    the layer's real C, in float64 (test_hippo proves that system's kernel is HiPPO-LegS + E's);
    its state (n2 = 16 + reals / 2 modes) goes in, out and step()s."""
    n, eps, length = 32, 0.5, 64  # seed 0: two real eigenvalues, so n2 = 17
    layer = S4D(2, d_state=n, init="ptd", ptd_eps=eps, dt_min=0.01, rngs=nnx.Rngs(0))
    replay = nnx.Rngs(0)
    replay.params()  # log Δ's key, then C's: the layer's real C (copies, h, n)
    C = np.asarray(jax.random.normal(replay.params(), (1, 2, n)), np.float64)[0]
    Lambda, B, W = ptd_diagonal(n, eps)
    kernel = np.asarray(layer.kernel(length))[0]  # (h, l)
    for channel, dt in enumerate(np.exp(np.asarray(layer.log_dt[...], np.float64))):
        dA = np.exp(dt * Lambda)
        weights = (C[channel] @ W) * (dA - 1) / Lambda * B
        exact = 2 * (np.power.outer(dA, np.arange(length)).T @ weights).real
        np.testing.assert_allclose(kernel[channel], exact, atol=1e-3 * np.abs(exact).max())
    assert layer.A_imag.shape == (2, 17) and layer.initial_state(3).shape == (3, 2, 17)
    x = inputs(h=2, length=12)
    h0 = jax.random.normal(jax.random.key(2), (2, 2, 17), jnp.complex64)
    y, h = layer(x, state=h0, return_state=True)
    state, steps = h0, []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        steps.append(y_t)
    np.testing.assert_allclose(y, jnp.stack(steps, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h, state, rtol=1e-4, atol=1e-4)
