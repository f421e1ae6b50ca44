"""The Mamba-2 block against a float64 NumPy loop written from its parameters, its init and its
option checks (the layer contract is checked by tests/layers/test_conformance.py)."""

import jax
import numpy as np
import pytest
from flax import nnx

from ssm.layers import LAYERS, Mamba2
from ssm.ops.ssd import SSD

D_MODEL = 6  # d_inner 12 = 4 heads of 3 channels, in 2 groups
TINY = dict(d_state=3, headdim=3, ngroups=2, dt_min=0.01, dt_max=0.5)


def inputs(b=2, length=9, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, length, D_MODEL))


def silu(v):
    return v / (1 + np.exp(-v))


def numpy_mamba2(layer, u):
    """The block step by step in float64 from the layer's parameters. u: (b, l, d) -> (b, l, d)."""
    p = {
        name: np.asarray(value, np.float64)
        for name, value in [
            ("w_in", layer.in_proj.kernel[...]),
            ("conv_w", layer.conv_weight[...]),
            ("conv_b", layer.conv_bias[...]),
            ("dt_bias", layer.dt_bias[...]),
            ("A_log", layer.A_log[...]),
            ("D", layer.D[...]),
            ("norm_w", layer.norm_weight[...]),
            ("w_out", layer.out_proj.kernel[...]),
        ]
    }
    e, n, g, heads, hp = layer.d_inner, layer.d_state, layer.ngroups, layer.nheads, layer.headdim
    k = p["conv_w"].shape[0]
    u = np.asarray(u, np.float64)
    b, length, _ = u.shape
    proj = u @ p["w_in"]
    z, xbc, dt = proj[..., :e], proj[..., e : 2 * e + 2 * g * n], proj[..., 2 * e + 2 * g * n :]
    A = -np.exp(p["A_log"])
    state = np.zeros((b, heads, hp, n))
    out = np.zeros_like(u)
    for t in range(length):
        window = sum(
            p["conv_w"][j] * xbc[:, t - (k - 1) + j] for j in range(k) if t - k + 1 + j >= 0
        )
        conv = silu(window + p["conv_b"])
        x = conv[:, :e].reshape(b, heads, hp)
        B = conv[:, e : e + g * n].reshape(b, g, n)
        C = conv[:, e + g * n :].reshape(b, g, n)
        delta = np.log1p(np.exp(dt[:, t] + p["dt_bias"]))  # (b, h)
        y = np.zeros((b, heads, hp))
        for head in range(heads):
            group = head // (heads // g)
            decay = np.exp(delta[:, head] * A[head])[:, None, None]
            dBx = (delta[:, head, None] * x[:, head])[:, :, None] * B[:, group, None, :]
            state[:, head] = decay * state[:, head] + dBx
            y[:, head] = np.einsum("bpn,bn->bp", state[:, head], C[:, group])
            y[:, head] += p["D"][head] * x[:, head]
        gated = y.reshape(b, e) * silu(z[:, t])
        groups = gated.reshape(b, g, e // g)
        normed = groups / np.sqrt(np.mean(groups**2, axis=-1, keepdims=True) + 1e-5)
        out[:, t] = (normed.reshape(b, e) * p["norm_w"]) @ p["w_out"]
    return out, state


def test_mamba2_is_registered_as_a_layer():
    assert LAYERS.get("mamba2") is Mamba2


@pytest.mark.parametrize("impl", ["reference", "quadratic", "chunked"])
def test_mamba2_block_equals_a_float64_numpy_loop_over_its_parameters(impl):
    layer = Mamba2(D_MODEL, **TINY, impl=impl, chunk_size=4, rngs=nnx.Rngs(0))
    # nonzero bias and norm weight so that a dropped term shows
    layer.conv_bias[...] = jax.random.normal(jax.random.key(5), layer.conv_bias.shape)
    layer.norm_weight[...] = 1 + jax.random.normal(jax.random.key(6), layer.norm_weight.shape)
    u = inputs()
    y, cache = nnx.jit(lambda layer, u: layer(u, return_state=True))(layer, u)
    y_np, state_np = numpy_mamba2(layer, u)
    scale = float(np.max(np.abs(y_np)))
    np.testing.assert_allclose(y, y_np, atol=1e-5 * scale)
    np.testing.assert_allclose(cache.ssm, state_np, atol=1e-5 * float(np.max(np.abs(state_np))))
    # the conv cache holds the last k - 1 = 3 conv inputs, oldest first
    xbc = layer.in_proj(u)[..., layer.d_inner : -layer.nheads]
    np.testing.assert_allclose(cache.conv, xbc[:, -3:], atol=1e-6)


def test_mamba2_passes_chunk_size_only_to_an_impl_that_takes_it(monkeypatch):
    chunked = SSD.get("chunked")
    seen = []

    def spy(*args, chunk_size=64):
        seen.append(chunk_size)
        return chunked(*args, chunk_size=chunk_size)

    monkeypatch.setitem(SSD._impls, "chunked", spy)
    u = inputs(b=1, length=65)  # auto: chunked above length 64, quadratic up to it
    layer = Mamba2(D_MODEL, **TINY, chunk_size=16, rngs=nnx.Rngs(0))
    forward = nnx.jit(lambda layer, u: layer(u))
    forward(layer, u)
    assert seen == [16]
    forward(layer, u[:, :64])  # quadratic takes no chunk_size: passing it would raise
    assert seen == [16]


def test_mamba2_init_follows_the_paper():
    layer = Mamba2(48, d_state=4, headdim=2, rngs=nnx.Rngs(0))  # 48 heads
    A = -np.asarray(layer.A())
    assert A.shape == (48,) and A.min() >= 1 and A.max() <= 16
    assert A.min() < 3 and A.max() > 14  # spread over the range
    dt = np.asarray(jax.nn.softplus(layer.dt_bias[...]))
    assert dt.shape == (48,)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.min() < 5e-3 and dt.max() > 2e-2  # spread over the log range
    np.testing.assert_array_equal(layer.D[...], 1.0)
    np.testing.assert_array_equal(layer.norm_weight[...], 1.0)
    # in_proj to (z, x, B, C, dt): 2 d_inner + 2 ngroups d_state + nheads
    assert layer.in_proj.kernel.shape == (48, 2 * 96 + 2 * 4 + 48)
    assert layer.conv_weight.shape == (4, 96 + 2 * 4)
    bound = 1 / np.sqrt(48)  # PyTorch's Linear: uniform in ±1/√fan_in
    kernel = np.asarray(layer.in_proj.kernel[...])
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound


def test_mamba2_dt_init_floor_clamps_the_initial_dt():
    layer = Mamba2(
        D_MODEL, headdim=3, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3, rngs=nnx.Rngs(0)
    )
    np.testing.assert_allclose(jax.nn.softplus(layer.dt_bias[...]), 1e-3, rtol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(headdim=5), r"headdim=5 must divide d_inner = expand \* d_model = 12"),
        (dict(headdim=3, ngroups=3), "ngroups=3 must divide nheads = d_inner / headdim = 4"),
        (dict(d_state=0), "Mamba2 d_state=0 is not valid; valid: an integer >= 1"),
        (dict(headdim=3, chunk_size=0), "chunk_size=0 is not valid; valid: an integer >= 1"),
        (
            dict(headdim=3, A_init_range=(0.0, 16.0)),
            r"A_init_range\[0\]=0.0 is not valid; valid: a number > 0",
        ),
        (
            dict(headdim=3, A_init_range=(16.0, 1.0)),
            r"A_init_range \(low, high\) with low <= high, got \(16.0, 1.0\)",
        ),
        (dict(headdim=3, dt_min=0.2, dt_max=0.1), "Mamba2 needs dt_min <= dt_max"),
        (dict(headdim=3, impl="nope"), "unknown Mamba2 impl 'nope'; valid: auto, chunked"),
        (dict(headdim=3, impl_options={"chunk_size": 8}), "set layer.chunk_size"),
    ],
)
def test_mamba2_rejects_bad_options_in_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        Mamba2(D_MODEL, **options, rngs=nnx.Rngs(0))
    assert "\n" not in str(error.value)
