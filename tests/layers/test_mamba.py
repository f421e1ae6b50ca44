import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import LAYERS, Mamba
from ssm.models import SequenceModel
from ssm.ops import depthwise_conv, reference
from ssm.params import SSMParam

D_MODEL = 20  # dt_rank = ceil(20 / 16) = 2


def inputs(b=2, length=12, d=D_MODEL, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, length, d))


@nnx.jit
def forward(layer, x, mask=None):
    return layer(x, mask)


def test_mamba_is_registered_as_a_layer():
    assert LAYERS.get("mamba") is Mamba


def test_depthwise_conv_matches_reference_toeplitz_sum_both_directions():
    x = inputs(length=9, d=5)
    weight = jax.random.normal(jax.random.key(2), (4, 5))
    bias = jax.random.normal(jax.random.key(3), (5,))
    kernel = jnp.zeros((9, 5)).at[:4].set(weight[::-1])  # kernel[lag] = weight[k - 1 - lag]
    np.testing.assert_allclose(
        depthwise_conv(x, weight, bias), reference.causal_conv(x, kernel) + bias, atol=1e-5
    )
    anti_causal = reference.causal_conv(x[:, ::-1], kernel)[:, ::-1] + bias
    np.testing.assert_allclose(
        depthwise_conv(x, weight, bias, reverse=True), anti_causal, atol=1e-5
    )
    # with the k - 1 inputs before x[0] as history: the tail of the conv of the whole
    np.testing.assert_allclose(
        depthwise_conv(x[:, 3:], weight, bias, history=x[:, :3]),
        depthwise_conv(x, weight, bias)[:, 3:],
        atol=1e-5,
    )


def test_mamba_bidirectional_equals_causal_branch_plus_reversed_branch_on_flipped_input():
    layer = Mamba(D_MODEL, d_state=4, bidirectional=True, dt_min=0.05, rngs=nnx.Rngs(0))
    x = inputs()
    u, z = jnp.split(layer.in_proj(x), 2, axis=-1)
    forward_branch = layer.ssm(u, z)[0]  # eager, so 1e-4: GPU matmuls differ jitted vs eager (TF32)
    backward = jnp.flip(layer.ssm_reverse(jnp.flip(u, 1), jnp.flip(z, 1))[0], 1)  # causal on flip
    np.testing.assert_allclose(
        forward(layer, x), layer.out_proj(forward_branch + backward), rtol=1e-4, atol=1e-4
    )


def test_mamba_is_causal_and_bidirectional_sees_the_future():
    x = inputs()
    x_changed = x.at[:, -1].add(1.0)
    causal = Mamba(D_MODEL, d_state=4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(
        forward(causal, x)[:, :-1], forward(causal, x_changed)[:, :-1], atol=1e-6
    )
    bidir = Mamba(D_MODEL, d_state=4, bidirectional=True, dt_min=0.05, rngs=nnx.Rngs(0))
    assert not np.allclose(forward(bidir, x)[:, 0], forward(bidir, x_changed)[:, 0], atol=1e-6)


def test_mamba_ssm_parameters_are_ssm_params_in_float32_under_bf16_compute():
    layer = Mamba(D_MODEL, d_state=4, bidirectional=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    for branch in (layer.ssm, layer.ssm_reverse):
        for param in (branch.A_log, branch.D, branch.dt_bias):
            assert isinstance(param, SSMParam)
        assert not isinstance(branch.x_proj.kernel, SSMParam)
    assert not isinstance(layer.in_proj.kernel, SSMParam)
    params = nnx.state(layer, nnx.Param)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    y = forward(layer, inputs())
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


def test_mamba_init_follows_the_paper():
    layer = Mamba(D_MODEL, d_state=4, dt_min=1e-3, dt_max=0.1, rngs=nnx.Rngs(0))
    dt = jax.nn.softplus(layer.ssm.dt_bias[...])
    assert dt.shape == (2 * D_MODEL,)
    assert float(dt.min()) >= 1e-3 * (1 - 1e-5) and float(dt.max()) <= 0.1 * (1 + 1e-5)
    assert float(dt.min()) < 5e-3 and float(dt.max()) > 2e-2  # spread over the log range
    np.testing.assert_allclose(layer.ssm.A(), -jnp.broadcast_to(jnp.arange(1.0, 5), (40, 4)))
    np.testing.assert_array_equal(layer.ssm.D[...], 1.0)
    assert layer.ssm.dt_proj.kernel.shape == (2, 2 * D_MODEL)  # dt_rank = ceil(20 / 16)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(d_state=0), "Mamba d_state=0 is not valid; valid: an integer >= 1"),
        (dict(dt_rank=0), "dt_rank=0 is not valid; valid: an integer >= 1 or null"),
        (dict(dt_min=0.2, dt_max=0.1), "Mamba needs dt_min <= dt_max"),
    ],
)
def test_mamba_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        Mamba(D_MODEL, **options, rngs=nnx.Rngs(0))


def test_sequence_model_with_mamba_layer_builds_and_runs():
    model = SequenceModel(
        num_classes=3,
        vocab_size=10,
        layer="mamba",
        layer_options=dict(d_state=4, bidirectional=True),
        d_model=D_MODEL,
        n_layers=2,
        rngs=nnx.Rngs(0),
    )
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 10)
    mask = jnp.arange(12)[None, :] < jnp.array([[7], [12]])
    logits = nnx.jit(lambda model, tokens, mask: model(tokens, mask))(model, tokens, mask)
    assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))


def test_mamba_projections_use_pytorch_linear_init():
    # uniform in ±1/sqrt(fan_in), as nn.Linear in the Mamba code (not lecun-normal)
    layer = Mamba(64, d_state=4, rngs=nnx.Rngs(0))
    for linear in (layer.in_proj, layer.out_proj, layer.ssm.x_proj):
        kernel = np.asarray(linear.kernel[...])
        bound = 1 / np.sqrt(kernel.shape[0])
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.98 * bound
        np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.05)


def test_mamba_impl_options_reach_the_scan():
    x = inputs()
    chunked = Mamba(
        D_MODEL, d_state=4, impl="chunked", impl_options=dict(chunk_size=5), rngs=nnx.Rngs(0)
    )
    reference_layer = Mamba(D_MODEL, d_state=4, impl="reference", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(forward(chunked, x), forward(reference_layer, x), atol=1e-5)
    bad = Mamba(
        D_MODEL, d_state=4, impl="associative", impl_options=dict(chunk_size=5), rngs=nnx.Rngs(0)
    )
    with pytest.raises(ValueError, match="takes no option 'chunk_size'"):
        forward(bad, x)
