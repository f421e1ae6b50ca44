"""The layer contract (ssm/layers/base.py), checked for every registered layer; parallel ==
step and padding also for every implementation of the op the layer dispatches to.

A new layer is covered by adding its configurations to ``CONFIGS``; a registered layer without
one fails ``test_every_registered_layer_has_conformance_configs``.
"""

import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import LAYERS, NoRecurrentState
from ssm.layers.base import packing_layers
from ssm.params import SSMParam

# layer name -> {config id: options}; bidirectional, sgconv and dss-softmax configs have no
# recurrent state.
CONFIGS = {
    "s4d": {
        "s4d": dict(d_state=8, channels=2, dt_min=0.05),
        "s4d-bidirectional": dict(d_state=8, channels=2, bidirectional=True, dt_min=0.05),
    },
    "dss": {
        "dss-exp": dict(d_state=8, channels=2, dt_min=0.05),
        "dss-softmax": dict(d_state=8, channels=2, kernel="softmax", dt_min=0.05),
        "dss-bidirectional": dict(d_state=8, channels=2, bidirectional=True, dt_min=0.05),
    },
    "mamba": {
        "mamba": dict(d_state=4, dt_min=0.01, dt_max=0.5),
        "mamba-bidirectional": dict(d_state=4, bidirectional=True, dt_min=0.01, dt_max=0.5),
    },
    "mamba2": {
        "mamba2": dict(d_state=4, headdim=4, dt_min=0.01, dt_max=0.5),
        "mamba2-groups": dict(d_state=4, headdim=4, ngroups=2, chunk_size=5, dt_min=0.01),
    },
    "lru": {
        "lru": dict(d_state=6, r_min=0.5, r_max=0.95),
        "lru-bidirectional": dict(d_state=6, r_min=0.5, r_max=0.95, bidirectional=True),
    },
    "rglru": {
        "rglru": dict(),
        "rglru-heads": dict(lru_width=12, num_heads=3, conv_width=2),
    },
    "sgconv": {
        "sgconv": dict(kernel_dim=4, l_max=12, channels=2),
        "sgconv-bidirectional": dict(kernel_dim=4, l_max=12, bidirectional=True),
    },
    "s5": {
        "s5": dict(d_state=8, blocks=2, dt_min=0.05),
        "s5-ptd-bilinear": dict(
            d_state=8, blocks=2, init="ptd", conj_sym=False, disc="bilinear", dt_min=0.05
        ),
        "s5-bidirectional": dict(d_state=8, blocks=2, bidirectional=True, dt_min=0.05),
    },
    "s4": {
        "s4": dict(d_state=8, channels=2, dt_min=0.05),
        "s4-legt-rank2": dict(d_state=8, init="legt", real="none", dt_min=0.05),
        "s4-bidirectional": dict(d_state=8, bidirectional=True, dt_min=0.05),
    },
}
D_MODEL, LENGTH, BATCH = 8, 12, 2
# |actual - expected| <= tol * max |expected|, per compute dtype.
TOLERANCE = {"float32": 1e-4, "bfloat16": 6e-2}


def impls_of(name):
    """The registered names of the op behind the layer's ``impl`` option ([None] if none);
    "auto" is left out: it is the layer's default, covered by ``CASES``."""
    hints = typing.get_type_hints(LAYERS.get(name).__init__, include_extras=True)
    if "impl" not in hints:
        return [None]
    (op,) = typing.get_args(hints["impl"])[1:]
    return op.names()[1:]


# Every config with the layer's default impl: the properties that do not depend on the impl.
CASES = [
    pytest.param(name, options, None, id=config)
    for name, configs in CONFIGS.items()
    for config, options in configs.items()
]
# Every config with every registered impl of its op: the properties an impl could break
# (parallel == step, padding). The op's own tests prove impls equal in outputs and gradients.
# Impls that CPU only interprets (slow there) take each layer's first config: the layer wiring.
INTERPRETED = ("pallas",)
IMPL_CASES = [
    pytest.param(name, options, impl, id=f"{config}-{impl}")
    for name, configs in CONFIGS.items()
    for i, (config, options) in enumerate(configs.items())
    for impl in impls_of(name)
    if i == 0 or impl not in INTERPRETED
]
# Configs with a recurrent state; the others are checked to refuse one in the parallel test.
RECURRENT_CASES = [
    case
    for case in CASES
    if LAYERS.get(case.values[0])(D_MODEL, **case.values[1], rngs=nnx.Rngs(0)).recurrent
]


def make_layer(name, options, impl, **kwargs):
    options = {**options, **({} if impl is None else {"impl": impl})}
    return LAYERS.get(name)(D_MODEL, **options, **kwargs, rngs=nnx.Rngs(0))


def inputs(length=LENGTH, seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), (BATCH, length, D_MODEL)).astype(dtype)


# Configs of the layers that take segment_ids (packed sequences).
PACKING_CASES = [case for case in CASES if LAYERS.get(case.values[0]).packs_segments]
# The sequence lengths packed in each row (the second one right-padded), one shorter than a conv.
PACKED = ([5, 7], [4, 3, 2])


@nnx.jit(static_argnames="return_state")
def forward(layer, x, mask=None, state=None, return_state=False, segment_ids=None):
    return layer(x, mask, state=state, return_state=return_state, segment_ids=segment_ids)


@nnx.jit
def step(layer, x_t, state):
    return layer.step(x_t, state)


def assert_close(actual, expected, dtype="float32", what=""):
    actual, expected = (np.asarray(jnp.asarray(a, jnp.float32)) for a in (actual, expected))
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE[dtype] * scale, err_msg=what)


def assert_states_close(actual, expected):
    """Every leaf of two states (real or complex) equal within the float32 tolerance."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        scale = float(jnp.max(jnp.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(a, e, atol=TOLERANCE["float32"] * scale, err_msg="state")


def test_every_registered_layer_has_conformance_configs():
    assert sorted(CONFIGS) == LAYERS.names()


@pytest.mark.parametrize("name, options, impl", IMPL_CASES)
def test_layer_parallel_equals_step_by_step(name, options, impl):
    layer = make_layer(name, options, impl)
    x = inputs()
    if not layer.recurrent:
        for ask in (
            lambda: layer.initial_state(BATCH),
            lambda: layer.step(x[:, 0], None),
            lambda: layer(x, return_state=True),
        ):
            with pytest.raises(NoRecurrentState) as error:
                ask()
            assert "\n" not in str(error.value)
        return
    state = layer.initial_state(BATCH)
    ys = []
    for t in range(LENGTH):
        y_t, state = step(layer, x[:, t], state)
        ys.append(y_t)
    y, final = forward(layer, x, return_state=True)
    assert y.shape == (BATCH, LENGTH, layer.d_output)
    assert_close(jnp.stack(ys, axis=1), y, what="step outputs")
    assert_states_close(state, final)


@pytest.mark.parametrize("name, options, impl", RECURRENT_CASES)
def test_layer_split_and_continue_equals_whole(name, options, impl):
    layer = make_layer(name, options, impl)
    assert layer.recurrent
    x, k = inputs(), 5
    y_whole, state_whole = forward(layer, x, return_state=True)
    y_first, state_mid = forward(layer, x[:, :k], return_state=True)
    y_second, state_last = forward(layer, x[:, k:], state=state_mid, return_state=True)
    assert_close(jnp.concatenate([y_first, y_second], axis=1), y_whole, what="outputs")
    assert_states_close(state_last, state_whole)
    # from an explicit zero state == from no state
    assert_close(forward(layer, x, state=layer.initial_state(BATCH)), y_whole, what="zero state")


@pytest.mark.parametrize("name, options, impl", IMPL_CASES)
def test_layer_padded_positions_change_nothing(name, options, impl):
    layer = make_layer(name, options, impl)
    x = inputs()
    lengths = [7, LENGTH]
    mask = jnp.arange(LENGTH)[None, :] < jnp.array(lengths)[:, None]
    noisy = jnp.where(mask[..., None], x, 100.0)
    if layer.recurrent:
        y, state = forward(layer, noisy, mask, return_state=True)
    else:
        y = forward(layer, noisy, mask)
    np.testing.assert_array_equal(y[0, lengths[0] :], 0.0)
    alone = x[:1, : lengths[0]]  # the padded row run alone (the full row has no padding)
    if layer.recurrent:
        y_alone, state_alone = forward(layer, alone, return_state=True)
        assert_states_close(jax.tree.map(lambda s: s[:1], state), state_alone)
    else:
        y_alone = forward(layer, alone)
    assert_close(y[:1, : lengths[0]], y_alone, what="padded row")
    assert jnp.all(jnp.isfinite(y[1]))  # the 100s of the other row's padding stay out of it


def packed_rows():
    """(segment_ids (b, l), mask (b, l), pieces [(row, start, stop)]) of ``PACKED``; padding
    has an id of its own, which must not matter."""
    segment_ids, mask, pieces = np.zeros((BATCH, LENGTH), np.int32), [], []
    for row, lengths in enumerate(PACKED):
        for i, start in enumerate(np.cumsum([0, *lengths[:-1]])):
            stop = start + lengths[i]
            segment_ids[row, start:stop] = 3 * i + 1
            pieces.append((row, start, stop))
        mask.append(np.arange(LENGTH) < sum(lengths))
    return jnp.asarray(segment_ids), jnp.asarray(np.stack(mask)), pieces


@pytest.mark.parametrize("name, options, impl", PACKING_CASES)
def test_layer_packed_rows_equal_their_sequences_run_apart(name, options, impl):
    layer = make_layer(name, options, impl)
    segment_ids, mask, pieces = packed_rows()
    x = jnp.where(mask[..., None], inputs(), 100.0)
    longest = max(map(max, PACKED))
    apart = jnp.stack(
        [
            jnp.pad(x[row, start:stop], [(0, longest - stop + start), (0, 0)])
            for row, start, stop in pieces
        ]
    )
    apart_mask = (
        jnp.arange(longest)[None] < jnp.array([stop - start for _, start, stop in pieces])[:, None]
    )
    if not layer.recurrent:
        y = forward(layer, x, mask, segment_ids=segment_ids)
        y_apart = forward(layer, apart, apart_mask)
    else:  # a given state continues each row's first sequence; the state out is the last's
        state = jax.tree.map(
            lambda z: jax.random.normal(jax.random.key(2), z.shape, z.dtype),
            layer.initial_state(BATCH),
        )
        rows = np.array([row for row, _, _ in pieces])
        first = np.array([start == 0 for _, start, _ in pieces])
        apart_state = jax.tree.map(
            lambda s, zero: jnp.where(first.reshape(-1, *[1] * (s.ndim - 1)), s[rows], zero),
            state,
            layer.initial_state(len(pieces)),
        )
        y, final = forward(layer, x, mask, state=state, return_state=True, segment_ids=segment_ids)
        y_apart, final_apart = forward(
            layer, apart, apart_mask, state=apart_state, return_state=True
        )
        last = [max(i for i, piece in enumerate(pieces) if piece[0] == row) for row in range(BATCH)]
        assert_states_close(final, jax.tree.map(lambda s: s[np.array(last)], final_apart))
    np.testing.assert_array_equal(y[~mask], 0.0)
    for i, (row, start, stop) in enumerate(pieces):
        assert_close(
            y[row, start:stop], y_apart[i, : stop - start], what=f"row {row} [{start}:{stop}]"
        )


@pytest.mark.parametrize(
    "name", [name for name in sorted(CONFIGS) if not LAYERS.get(name).packs_segments]
)
def test_layer_without_packed_sequences_refuses_segment_ids_in_one_line_naming_those_with(name):
    layer = make_layer(name, next(iter(CONFIGS[name].values())), None)
    with pytest.raises(ValueError) as error:
        layer(inputs(), segment_ids=jnp.zeros((BATCH, LENGTH), jnp.int32))
    assert str(error.value) == (
        f"{type(layer).__name__} does not take segment_ids (packed sequences); "
        f"layers that do: {', '.join(packing_layers())}"
    )
    assert "mamba" in packing_layers()


@pytest.mark.parametrize("name, options, impl", CASES)
def test_layer_bf16_compute_is_within_tolerance_of_float32(name, options, impl):
    fp32 = make_layer(name, options, impl)
    bf16 = make_layer(name, options, impl, dtype=jnp.bfloat16)
    x = inputs()
    y = forward(bf16, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert_close(y, forward(fp32, x), "bfloat16")
    if bf16.recurrent:
        y_t, _ = step(bf16, x[:, 0].astype(jnp.bfloat16), bf16.initial_state(BATCH))
        assert y_t.dtype == jnp.bfloat16
        assert_close(y_t, forward(fp32, x)[:, 0], "bfloat16", "step")


@pytest.mark.parametrize("name, options, impl", CASES)
def test_layer_gradients_are_finite_and_reach_every_parameter(name, options, impl):
    layer = make_layer(name, options, impl)
    x = inputs()
    mask = jnp.arange(LENGTH)[None, :] < jnp.array([[9], [LENGTH]])

    def loss(layer):
        return jnp.mean(layer(x, mask) ** 2)

    grads = nnx.jit(nnx.grad(loss))(layer)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(grads)]
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(nnx.state(layer, nnx.Param)))
    for path, g in zip(names, leaves, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), path
        assert float(jnp.max(jnp.abs(g))) > 0, f"no gradient reaches {path}"


@pytest.mark.parametrize("name, options, impl", CASES)
def test_layer_ssm_parameters_are_ssm_params_in_float32(name, options, impl):
    layer = make_layer(name, options, impl, param_dtype=jnp.bfloat16)
    ssm_params = jax.tree.leaves(nnx.state(layer, SSMParam))
    assert ssm_params, "a state-space layer declares its SSM parameters as SSMParam"
    assert {p.dtype for p in ssm_params} == {jnp.dtype(jnp.float32)}
    others = jax.tree.leaves(nnx.state(layer, nnx.Not(SSMParam)))
    assert {p.dtype for p in others} <= {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layer_rejects_an_unregistered_impl_naming_the_registered_ones(name):
    if impls_of(name) == [None]:
        pytest.skip(f"{name} dispatches to no op")
    with pytest.raises(ValueError, match=r"impl 'nope'; valid: auto, .*reference") as error:
        make_layer(name, next(iter(CONFIGS[name].values())), "nope")
    assert "\n" not in str(error.value)
