import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import S4D
from ssm.ops import reference
from ssm.params import SSMParam


def inputs(b=2, length=40, h=6, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, length, h))


def run_steps(layer, x):
    state = layer.initial_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    return jnp.stack(ys, axis=1)


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real"])
def test_s4d_parallel_matches_recurrent_step(init, disc):
    layer = S4D(6, d_state=16, init=init, disc=disc, channels=2, rngs=nnx.Rngs(0))
    x = inputs()
    np.testing.assert_allclose(layer(x), run_steps(layer, x), rtol=1e-4, atol=1e-4)


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


def test_s4d_padded_positions_do_not_leak_into_valid_ones():
    layer = S4D(6, d_state=16, bidirectional=True, rngs=nnx.Rngs(0))
    x = inputs()
    mask = jnp.arange(40)[None, :] < jnp.array([[25], [40]])
    noisy = jnp.where(mask[..., None], x, 100.0)
    np.testing.assert_allclose(
        jnp.where(mask[..., None], layer(x, mask), 0),
        jnp.where(mask[..., None], layer(noisy, mask), 0),
        atol=1e-4,
    )


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_gradients_are_finite_for_every_parameter(disc):
    layer = S4D(6, d_state=16, disc=disc, channels=2, bidirectional=True, rngs=nnx.Rngs(0))
    x = inputs(length=64)

    def loss(layer):
        return jnp.mean(layer(x) ** 2)

    grads = nnx.grad(loss)(layer)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == 6
    for g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_s4d_ssm_parameters_have_the_ssm_type():
    layer = S4D(4, d_state=8, rngs=nnx.Rngs(0))
    ssm_params = nnx.state(layer, SSMParam)
    assert set(ssm_params.keys()) == {"log_dt", "log_A_real", "A_imag", "B", "C"}
    assert not isinstance(layer.D, SSMParam)


def test_s4d_bf16_compute_keeps_float32_kernel():
    x = inputs()
    fp32 = S4D(6, d_state=16, rngs=nnx.Rngs(0))
    bf16 = S4D(6, d_state=16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y = bf16(x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and bf16.log_dt.dtype == jnp.float32
    np.testing.assert_allclose(y.astype(jnp.float32), fp32(x), rtol=3e-2, atol=3e-2)


def test_s4d_log_dt_is_initialised_in_range():
    layer = S4D(256, d_state=4, dt_min=1e-3, dt_max=1e-1, rngs=nnx.Rngs(0))
    dt = np.exp(np.asarray(layer.log_dt[...]))
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1 and dt.max() / dt.min() > 20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_state=7), "even integer"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min <= dt_max"),
        (dict(init="hippo"), "valid: legs, lin, inv, real"),
    ],
)
def test_s4d_bad_options_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S4D(4, rngs=nnx.Rngs(0), **kwargs)


def test_s4d_bidirectional_step_is_refused():
    layer = S4D(4, d_state=8, bidirectional=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="bidirectional"):
        layer.step(jnp.zeros((1, 4)), layer.initial_state(1))
