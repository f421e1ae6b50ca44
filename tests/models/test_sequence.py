import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.models import SequenceModel


def model(**kwargs):
    options = dict(num_classes=5, d_input=3, d_model=8, n_layers=2, layer_options={"d_state": 4})
    return SequenceModel(**{**options, **kwargs}, rngs=nnx.Rngs(0))


def padded_pair(length=12, valid=7):
    """Two copies of a batch that differ only at padded positions, and the mask."""
    x = jax.random.normal(jax.random.key(0), (2, length, 3))
    mask = jnp.arange(length)[None, :] < jnp.array([[valid], [length]])
    noisy = jnp.where(mask[..., None], x, 50.0 * jax.random.normal(jax.random.key(1), x.shape))
    return x, noisy, mask


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_positions_never_leak_into_the_pooled_output(pooling, norm, bidirectional):
    m = model(
        pooling=pooling, norm=norm, layer_options={"d_state": 4, "bidirectional": bidirectional}
    )
    x, noisy, mask = padded_pair()
    np.testing.assert_allclose(m(x, mask), m(noisy, mask), rtol=1e-5, atol=1e-5)
    key = jax.random.key(3)
    np.testing.assert_allclose(
        m(x, mask, train=True, key=key), m(noisy, mask, train=True, key=key), rtol=1e-4, atol=1e-4
    )


def test_mean_pooling_of_padded_example_equals_the_unpadded_example():
    m = model(layer_options={"d_state": 4, "bidirectional": True})
    x, _, mask = padded_pair(valid=7)
    np.testing.assert_allclose(m(x, mask)[0], m(x[:1, :7])[0], rtol=1e-4, atol=1e-5)


def test_last_pooling_reads_the_last_valid_position():
    m = model(pooling="last")
    x, _, mask = padded_pair(valid=7)
    np.testing.assert_allclose(m(x, mask)[0], m(x[:1, :7])[0], rtol=1e-4, atol=1e-5)


def test_token_inputs_and_per_position_outputs():
    m = model(d_input=None, vocab_size=11, pooling="none")
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 11)
    assert m(tokens).shape == (2, 9, 5)


@pytest.mark.parametrize("output", ["glu", "linear", "none"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_blocks_build_and_run_in_every_variant(output, prenorm):
    layer = dict(layer="mamba", layer_options={"d_state": 4}) if output == "none" else {}
    m = model(output=output, prenorm=prenorm, activation="silu", dtype="bfloat16", **layer)
    y = m(jnp.ones((2, 6, 3)))
    assert y.shape == (2, 5) and bool(jnp.all(jnp.isfinite(y)))


def test_dropout_is_active_only_in_training_and_keyed():
    m = model(dropout=0.5)
    x = jnp.ones((2, 6, 3))
    np.testing.assert_array_equal(m(x), m(x))
    a, b = m(x, train=True, key=jax.random.key(1)), m(x, train=True, key=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, m(x, train=True, key=jax.random.key(1)))


def test_unknown_layer_names_the_valid_layers():
    with pytest.raises(ValueError, match=r"unknown layer 'lstm'; valid: .*s4d"):
        model(layer="lstm")


def test_exactly_one_of_d_input_and_vocab_size():
    with pytest.raises(ValueError, match="exactly one of d_input"):
        model(vocab_size=4)


def test_paired_model_is_two_towers_of_one_backbone():
    m = model(d_input=None, vocab_size=7, paired=True)
    tokens = jax.random.randint(jax.random.key(0), (3, 2, 10), 0, 7)
    mask = jnp.ones((3, 2, 10), bool).at[1, 0, 6:].set(False)
    u = m.features(tokens[:, 0], mask[:, 0], False, None)
    v = m.features(tokens[:, 1], mask[:, 1], False, None)
    expected = m.head(jnp.concatenate([u, v, u * v, u - v], axis=-1))
    np.testing.assert_allclose(m(tokens, mask), expected, rtol=1e-5, atol=1e-6)
    swapped = m(tokens[:, ::-1], mask[:, ::-1])
    assert not np.allclose(swapped, m(tokens, mask))


def test_output_none_adds_the_layer_output_to_the_residual_directly():
    m = model(layer="mamba", layer_options={"d_state": 4}, output="none", n_layers=1)
    x = jax.random.normal(jax.random.key(0), (2, 6, 3))
    h = m.encoder(x)
    block = m.blocks[0]
    expected = h + block.layer(block.norm(h))
    pooled = jnp.mean(m.final_norm(expected), axis=1)
    np.testing.assert_allclose(m(x), m.head(pooled), rtol=1e-5, atol=1e-5)


def test_output_none_refuses_a_layer_with_a_different_output_size():
    with pytest.raises(ValueError, match="output='none' needs a layer whose output size"):
        model(output="none", layer_options={"d_state": 4, "channels": 2})


def test_gelu_is_exact_and_gelu_tanh_is_the_approximation():
    from math import erf, sqrt, tanh

    from ssm.models.sequence import ACTIVATIONS

    x = np.linspace(-4, 4, 33)
    exact = [0.5 * v * (1 + erf(v / sqrt(2))) for v in x]
    approx = [0.5 * v * (1 + tanh(sqrt(2 / np.pi) * (v + 0.044715 * v**3))) for v in x]
    xs = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(ACTIVATIONS["gelu"](xs), exact, atol=1e-6)
    np.testing.assert_allclose(ACTIVATIONS["gelu_tanh"](xs), approx, atol=1e-6)
    assert float(jnp.max(jnp.abs(ACTIVATIONS["gelu"](xs) - ACTIVATIONS["gelu_tanh"](xs)))) > 1e-4


@pytest.mark.parametrize("output", ["glu", "half_glu1", "half_glu2"])
def test_glu_outputs_are_s5s_full_and_half_glus(output):
    m = model(output=output, n_layers=1)
    x = jax.random.normal(jax.random.key(0), (2, 6, 3))
    h = m.encoder(x)
    block = m.blocks[0]
    z = block.layer(block.norm(h))
    a = 0.5 * z * (1 + jax.scipy.special.erf(z / np.sqrt(2)))  # exact gelu
    W, bias = block.out.kernel[...], block.out.bias[...]
    if output == "glu":  # S5's full_glu: out1(a) * sigmoid(out2(a))
        update = (a @ W[:, :8] + bias[:8]) * jax.nn.sigmoid(a @ W[:, 8:] + bias[8:])
    else:
        update = (a if output == "half_glu1" else z) * jax.nn.sigmoid(a @ W + bias)
    pooled = jnp.mean(m.final_norm(h + update), axis=1)
    np.testing.assert_allclose(m(x), m.head(pooled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output", ["half_glu1", "half_glu2"])
def test_half_glu_refuses_a_layer_with_a_different_output_size(output):
    with pytest.raises(ValueError, match=f"output='{output}' needs a layer whose output size"):
        model(output=output, layer_options={"d_state": 4, "channels": 2})


@pytest.mark.parametrize("layer", ["s4d", "mamba"])
def test_sequence_model_state_continues_and_steps_as_the_parallel_mode(layer):
    options = {"d_state": 8} if layer == "s4d" else {"d_state": 4}
    model = SequenceModel(
        num_classes=7,
        vocab_size=7,
        layer=layer,
        layer_options=options,
        d_model=8,
        n_layers=2,
        dropout=0.0,
        pooling="none",
        output="none" if layer == "mamba" else "glu",
        rngs=nnx.Rngs(0),
    )
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 7)
    full = model(tokens)
    first, state = model(tokens[:, :5], return_state=True)
    rest, _ = model(tokens[:, 5:], state=state, return_state=True)
    np.testing.assert_allclose(jnp.concatenate([first, rest], 1), full, atol=1e-4)
    state, steps = model.initial_state(2), []
    for t in range(12):
        logits, state = model.step(tokens[:, t], state)
        steps.append(logits)
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4)


def test_sequence_model_state_needs_per_position_outputs():
    model = SequenceModel(num_classes=2, vocab_size=5, d_model=8, n_layers=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pooling 'none'"):
        model(jnp.zeros((1, 4), jnp.int32), return_state=True)
