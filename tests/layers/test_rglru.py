import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import LAYERS, RGLRU
from ssm.layers.rglru import sqrt_bound_derivative
from ssm.params import SSMParam

D_MODEL, WIDTH, HEADS = 6, 8, 2


def make_layer(**options):
    """A layer whose biases are random too, so the references check where every one enters."""
    options = dict(lru_width=WIDTH, num_heads=HEADS, **options)
    layer = RGLRU(D_MODEL, **options, rngs=nnx.Rngs(0))
    biases = [
        layer.linear_x.bias,
        layer.linear_y.bias,
        layer.linear_out.bias,
        layer.conv_bias,
        layer.lru.input_gate.b,
        layer.lru.a_gate.b,
    ]
    for seed, bias in enumerate(biases):
        bias.value = jax.random.normal(jax.random.key(100 + seed), bias.shape)
    return layer


def inputs(*shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def np64(param):
    return np.asarray(param[...], np.float64)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def block_diagonal(x, gate):
    """NumPy: (l, e) through the per-head (h, p, p) weight and (h, p) bias."""
    w, b = np64(gate.w), np64(gate.b)
    heads = [x[:, i * w.shape[1] : (i + 1) * w.shape[1]] @ w[i] + b[i] for i in range(len(w))]
    return np.concatenate(heads, axis=-1)


def rglru_numpy(layer, x, h0):
    """The RG-LRU equations in float64, one step at a time. x (b, l, e), h0 (b, e)."""
    cell = layer.lru
    a_base = sigmoid(-np64(cell.a_param))  # a = σ(Λ) with Λ = -a_param
    hs, finals = [], []
    for x_row, h in zip(np.asarray(x, np.float64), np.asarray(h0, np.float64), strict=True):
        r = sigmoid(block_diagonal(x_row, cell.a_gate))  # recurrence gate
        i = sigmoid(block_diagonal(x_row, cell.input_gate))  # input gate
        a = a_base ** (8.0 * r)  # c = 8
        row = []
        for t in range(len(x_row)):
            h = a[t] * h + np.sqrt(1 - a[t] ** 2) * (i[t] * x_row[t])
            row.append(h)
        hs.append(row)
        finals.append(h)
    return np.array(hs), np.array(finals)


def test_rglru_is_registered_with_its_own_output_projection():
    assert LAYERS.get("rglru") is RGLRU
    assert RGLRU.output_projection


def test_rglru_recurrence_matches_numpy_float64_loop():
    layer = make_layer()
    x, h0 = inputs(2, 10, WIDTH), inputs(2, WIDTH, seed=2)
    h, h_last = nnx.jit(lambda cell, x, h0: cell(x, h0=h0))(layer.lru, x, h0)
    expected, expected_last = rglru_numpy(layer, x, h0)
    np.testing.assert_allclose(h, expected, atol=1e-5)
    np.testing.assert_allclose(h_last, expected_last, atol=1e-5)
    # one step equals the first position of the scan
    step = nnx.jit(lambda cell, x_t, h: cell.step(x_t, h))(layer.lru, x[:, 0], h0)
    np.testing.assert_allclose(step, expected[:, 0], atol=1e-5)


def test_rglru_block_matches_numpy_float64():
    layer = make_layer(conv_width=3)
    x = inputs(2, 9, D_MODEL)
    x64 = np.asarray(x, np.float64)

    def linear(module, v):
        return v @ np64(module.kernel) + np64(module.bias)

    y = linear(layer.linear_y, x64)
    y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))  # gelu, tanh form
    u = linear(layer.linear_x, x64)  # (b, l, e)
    w, k = np64(layer.conv_weight), layer.conv_weight.shape[0]
    padded = np.pad(u, [(0, 0), (k - 1, 0), (0, 0)])
    conv = np64(layer.conv_bias) + sum(w[j] * padded[:, j : j + 9] for j in range(k))  # causal
    h, _ = rglru_numpy(layer, conv, np.zeros((2, WIDTH)))
    expected = linear(layer.linear_out, h * y)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), expected, atol=1e-5)


def test_rglru_a_param_init_puts_a_squared_uniform_in_the_ring_as_recurrentgemma():
    # recurrentgemma's rnn_param_init: a = σ(-a_param) = exp(-softplus(a_param)) with a²
    # uniform in [min_rad², max_rad²] (uniform by area on the ring min_rad <= |a| <= max_rad).
    for min_rad, max_rad in ((0.9, 0.999), (0.5, 0.7)):
        # 4096 one-channel heads: small gates, many draws
        layer = RGLRU(
            4, lru_width=4096, num_heads=4096, min_rad=min_rad, max_rad=max_rad, rngs=nnx.Rngs(0)
        )
        assert isinstance(layer.lru.a_param, SSMParam)
        assert layer.lru.a_param.dtype == jnp.float32
        a_squared = np.sort(np.exp(-2 * jax.nn.softplus(layer.lru.a_param[...])))
        low, high = min_rad**2, max_rad**2
        assert a_squared.min() >= low - 1e-6 and a_squared.max() <= high + 1e-6
        cdf = (a_squared - low) / (high - low)
        empirical = np.arange(1, len(cdf) + 1) / len(cdf)
        assert np.max(np.abs(cdf - empirical)) < 0.03  # Kolmogorov-Smirnov, n = 4096


def test_rglru_sqrt_derivative_is_clipped_at_1000():
    x = jnp.array([0.0, 1e-9, 0.25])
    np.testing.assert_allclose(sqrt_bound_derivative(x, 1000.0), jnp.sqrt(x))
    grad = jax.grad(lambda x: sqrt_bound_derivative(x, 1000.0).sum())(x)
    np.testing.assert_allclose(grad, [1000.0, 1000.0, 1.0], rtol=1e-6)


def test_rglru_gradients_stay_finite_where_the_recurrence_gate_closes_to_a_equal_one():
    layer = make_layer()
    layer.lru.a_gate.b.value = jnp.full(layer.lru.a_gate.b.shape, -200.0)  # r = 0: a_t = 1
    x = inputs(2, 6, D_MODEL)
    grads = nnx.jit(nnx.grad(lambda layer: jnp.sum(layer(x) ** 2)))(layer)
    for g in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(g)))


def test_rglru_gates_are_block_diagonal_per_head():
    layer = make_layer()
    x = inputs(3, WIDTH)
    head = WIDTH // HEADS
    changed = x.at[:, :head].add(1.0)  # only head 0's inputs
    for gate in (layer.lru.input_gate, layer.lru.a_gate):
        assert gate.w.shape == (HEADS, head, head)
        np.testing.assert_array_equal(
            gate(x, jnp.float32)[:, head:], gate(changed, jnp.float32)[:, head:]
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lru_width=0), "lru_width=0 is not valid; valid: an integer >= 1 or null"),
        (dict(num_heads=3), "num_heads must divide lru_width=8, got 3"),
        (dict(num_heads=0), "num_heads=0 is not valid; valid: an integer >= 1"),
        (dict(conv_width=0), "conv_width=0 is not valid; valid: an integer >= 1"),
        (dict(min_rad=0.0), r"min_rad=0.0 is not valid; valid: a number in \(0, 1\)"),
        (dict(max_rad=1.0), r"max_rad=1.0 is not valid; valid: a number in \(0, 1\)"),
        (dict(min_rad=0.99, max_rad=0.9), "RGLRU needs min_rad <= max_rad"),
        (dict(impl="nope"), "RGLRU impl 'nope'; valid: auto"),
    ],
)
def test_rglru_rejects_bad_options_in_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        RGLRU(8, **options, rngs=nnx.Rngs(0))
    assert "\n" not in str(error.value)
