import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import NoRecurrentState, SGConv
from ssm.layers.sgconv import num_scales

H, KERNEL_DIM, L_MAX = 3, 8, 30  # 3 scales: 8 + 8 + 16 = 32 positions covered


def numpy_kernel(w, length, mode, interpolate, decay_min, decay_max, z=None):
    """The authors' construction in float64: the full kernel of all n scales (scale i upsampled
    like F.interpolate and weighted multiplier^(n-1-i), or a (t+1)^-γ envelope), divided by its
    norm (``z``: the norm of the initial kernel), then cut or zero-padded to ``length``."""
    n, c, h, d = w.shape
    rate = np.linspace(decay_min, decay_max, h)
    pieces = []
    for i in range(n):
        factor = 2 ** max(i - 1, 0)
        j = np.arange(d * factor)
        if interpolate == "nearest":
            up = w[i][..., j // factor]
        else:  # np.interp clamps past the ends, as align_corners=False does
            source = (j + 0.5) / factor - 0.5
            rows = [np.interp(source, np.arange(d), row) for row in w[i].reshape(-1, d)]
            up = np.reshape(rows, (c, h, -1))
        if mode == "scale":
            up = up * rate[:, None] ** (n - 1 - i)
        pieces.append(up)
    full = np.concatenate(pieces, axis=-1)
    if mode == "power":
        full = full * (np.arange(full.shape[-1]) + 1.0) ** -rate[:, None]
    z = np.linalg.norm(full, axis=-1, keepdims=True) if z is None else z
    k = np.zeros((c, h, length))
    covered = min(length, full.shape[-1])
    k[..., :covered] = (full / z)[..., :covered]
    return k, z


def make(**kwargs):
    options = dict(kernel_dim=KERNEL_DIM, l_max=L_MAX, decay_min=1.5, decay_max=3.0)
    return SGConv(H, **{**options, **kwargs}, rngs=nnx.Rngs(0))


def inputs(b=2, length=20, h=H, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, length, h))


@pytest.mark.parametrize("length", [5, 20, 32, 45])  # < kernel_dim, not 2^k, coverage, past it
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(interpolate="nearest", channels=2),
        dict(decay="power", decay_min=0.5, decay_max=1.0, bidirectional=True),
    ],
    ids=["scale-linear", "scale-nearest-channels", "power-bidirectional"],
)
def test_sgconv_kernel_matches_the_authors_construction_in_numpy(options, length):
    layer = make(**options)
    w = np.asarray(layer.sub_kernels[...], np.float64)
    mode, interpolate = options.get("decay", "scale"), options.get("interpolate", "linear")
    rates = options.get("decay_min", 1.5), options.get("decay_max", 3.0)
    expected, _ = numpy_kernel(w, length, mode, interpolate, *rates)
    np.testing.assert_allclose(layer.kernel(length), expected, rtol=1e-5, atol=1e-6)


def test_sgconv_kernel_norm_is_the_initial_one_and_stays_fixed():
    layer = make(channels=2)
    np.testing.assert_allclose(np.linalg.norm(layer.kernel(32), axis=-1), 1.0, rtol=1e-5)
    w0 = np.asarray(layer.sub_kernels[...], np.float64)
    _, z0 = numpy_kernel(w0, 32, "scale", "linear", 1.5, 3.0)
    w = jax.random.normal(jax.random.key(7), layer.sub_kernels.shape)
    layer.sub_kernels[...] = w
    expected, _ = numpy_kernel(np.asarray(w, np.float64), 20, "scale", "linear", 1.5, 3.0, z0)
    np.testing.assert_allclose(layer.kernel(20), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length, scales", [(1, 1), (8, 1), (9, 2), (16, 2), (17, 3), (33, 4)])
def test_sgconv_number_of_scales_is_the_fewest_that_cover_the_length(length, scales):
    assert num_scales(length, KERNEL_DIM) == scales


def numpy_conv(x, k, D, k_reverse=None):
    """y[t, c, h] = sum_{s<=t} k[c, h, t-s] x[s, h] (+ sum_{s>t} k_reverse[c, h, s-t-1] x[s, h])
    + D[c, h] x[t, h], by explicit sums."""
    b, length, h = x.shape
    y = np.einsum("ch,blh->blch", D, x)
    for t in range(length):
        for s in range(length):
            if s <= t:
                y[:, t] += k[:, :, t - s] * x[:, s, None]
            elif k_reverse is not None:
                y[:, t] += k_reverse[:, :, s - t - 1] * x[:, s, None]
    return y.reshape(b, length, -1)


@pytest.mark.parametrize("impl", ["fft", "reference"])
def test_sgconv_output_is_the_direct_causal_convolution_plus_skip(impl):
    layer = make(channels=2, impl=impl)
    x = inputs(length=20)
    k = np.asarray(layer.kernel(20), np.float64)
    expected = numpy_conv(np.asarray(x, np.float64), k, np.asarray(layer.D[...], np.float64))
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["fft", "reference"])
def test_sgconv_bidirectional_adds_the_anticausal_convolution_from_lag_minus_one(impl):
    layer = make(channels=2, bidirectional=True, impl=impl)
    x = inputs(length=20)
    k = np.asarray(layer.kernel(20), np.float64)  # (2 * channels, h, l)
    D = np.asarray(layer.D[...], np.float64)
    expected = numpy_conv(np.asarray(x, np.float64), k[:2], D, k[2:])
    np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_sgconv_has_no_recurrent_state_and_says_so_in_one_line():
    layer = make()
    x = inputs()
    assert not layer.recurrent
    for ask in (
        lambda: layer.initial_state(2),
        lambda: layer.step(x[:, 0], None),
        lambda: layer(x, return_state=True),
        lambda: layer(x, state=jnp.zeros((2, H))),
    ):
        with pytest.raises(NoRecurrentState, match="long convolution has no finite state") as e:
            ask()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_dim=0), "SGConv kernel_dim=0 is not valid; valid: an integer >= 1"),
        (dict(l_max=0), "l_max=0 is not valid; valid: an integer >= 1"),
        (dict(decay_min=3.0, decay_max=2.0), "SGConv needs decay_min <= decay_max"),
        (dict(decay_min=0.0), "decay_min=0.0 is not valid; valid: a number > 0"),
        (dict(decay="exp"), "valid: scale, power"),
        (dict(interpolate="cubic"), "valid: linear, nearest"),
        (dict(channels=0), "channels=0 is not valid; valid: an integer >= 1"),
        (dict(impl="nope"), "valid: auto, .*reference"),
    ],
)
def test_sgconv_bad_options_give_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        make(**kwargs)
    assert "\n" not in str(e.value)
