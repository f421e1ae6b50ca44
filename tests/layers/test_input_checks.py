"""The checks of the layer contract (ssm/layers/base.py), for every registered layer: a bad
constructor number, an input of the wrong rank or width and a wrong mask are one-line
ValueErrors; an empty sequence gives an empty output and keeps the state."""

import typing

import jax.numpy as jnp
import pytest
from flax import nnx
from test_conformance import BATCH, CONFIGS, D_MODEL, assert_states_close, forward, inputs

from ssm.config import Range
from ssm.layers import LAYERS, NoRecurrentState

# One config per registered layer, and every config with a recurrent state.
FIRST = [pytest.param(name, next(iter(CONFIGS[name].values())), id=name) for name in CONFIGS]
ALL = [
    pytest.param(name, options, id=config)
    for name, configs in CONFIGS.items()
    for config, options in configs.items()
]


def make(name, options, d_model=D_MODEL):
    return LAYERS.get(name)(d_model, **options, rngs=nnx.Rngs(0))


def one_line_error(error_type, fn, *args, **kwargs):
    with pytest.raises(error_type) as error:
        fn(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def just_outside(tp):
    """A value just outside the ``Range`` of the annotation ``tp`` (through ``| None`` and
    ``tuple[...]``), or None when ``tp`` has no Range."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        marker = next((m for m in typing.get_args(tp)[1:] if isinstance(m, Range)), None)
        if marker is None:
            return None
        if marker.min is not None:
            return marker.min if marker.min_open else marker.min - 1
        return marker.max if marker.max_open else marker.max + 1
    if origin is tuple:
        return (just_outside(typing.get_args(tp)[0]),) * 2
    return next(
        (bad for arg in typing.get_args(tp) if (bad := just_outside(arg)) is not None), None
    )


RANGED = [
    pytest.param(name, option, bad, id=f"{name}-{option}")
    for name in CONFIGS
    for option, tp in typing.get_type_hints(LAYERS.get(name).__init__, include_extras=True).items()
    if option != "d_model" and (bad := just_outside(tp)) is not None
]


@pytest.mark.parametrize("name, options", FIRST)
@pytest.mark.parametrize("d_model", [0, -1])
def test_layer_with_a_bad_d_model_fails_in_one_line_naming_it(name, options, d_model):
    message = one_line_error(ValueError, make, name, options, d_model)
    cls = LAYERS.get(name).__name__
    assert message == f"{cls} d_model={d_model} is not valid; valid: an integer >= 1"


@pytest.mark.parametrize("name, option, bad", RANGED)
def test_layer_refuses_a_number_just_outside_its_range_in_one_line_naming_it(name, option, bad):
    options = {**next(iter(CONFIGS[name].values())), option: bad}
    message = one_line_error(ValueError, make, name, options)
    assert message.startswith(f"{LAYERS.get(name).__name__} {option}")
    assert "is not valid; valid: " in message


@pytest.mark.parametrize("name, options", FIRST)
@pytest.mark.parametrize("shape", [(BATCH, D_MODEL), (BATCH, 5, D_MODEL, 1), (BATCH, 5, 7)])
def test_layer_rejects_x_not_b_l_d_model_in_one_line(name, options, shape):
    layer = make(name, options)
    message = one_line_error(ValueError, layer, jnp.zeros(shape))
    expected = f"(b, l, d_model={D_MODEL})"
    assert message == f"{type(layer).__name__} expects x of shape {expected}, got {shape}"


@pytest.mark.parametrize("name, options", FIRST)
def test_layer_rejects_a_mask_not_b_l_in_one_line(name, options):
    layer = make(name, options)
    message = one_line_error(ValueError, layer, inputs(), jnp.ones((BATCH, 3), bool))
    assert message.endswith(f"mask of shape (b, l) = ({BATCH}, 12), got ({BATCH}, 3)")


@pytest.mark.parametrize(
    "name, options", [case for case in FIRST if LAYERS.get(case.values[0]).packs_segments]
)
@pytest.mark.parametrize("segment_ids", [jnp.zeros((BATCH, 3), int), jnp.zeros((BATCH, 12))])
def test_layer_rejects_segment_ids_not_b_l_ints_in_one_line(name, options, segment_ids):
    layer = make(name, options)
    message = one_line_error(ValueError, layer, inputs(), segment_ids=segment_ids)
    assert message.startswith(f"{type(layer).__name__} expects segment_ids of integers of shape")
    assert message.endswith(f"{segment_ids.dtype} of shape {segment_ids.shape}")


@pytest.mark.parametrize("name, options", ALL)
def test_layer_step_rejects_x_t_not_b_d_model_in_one_line(name, options):
    layer = make(name, options)
    if not layer.recurrent:
        pytest.skip("no recurrent state")
    state = layer.initial_state(BATCH)
    message = one_line_error(ValueError, layer.step, jnp.zeros((BATCH, 1, D_MODEL)), state)
    assert message.endswith(f"x_t of shape (b, d_model={D_MODEL}), got ({BATCH}, 1, {D_MODEL})")


@pytest.mark.parametrize("name, options", ALL)
def test_layer_maps_an_empty_sequence_to_an_empty_output_and_keeps_the_state(name, options):
    layer = make(name, options)
    empty = jnp.zeros((BATCH, 0, D_MODEL))
    y = forward(layer, empty, jnp.ones((BATCH, 0), bool))
    assert y.shape == (BATCH, 0, layer.d_output) and y.dtype == jnp.float32
    if not layer.recurrent:
        one_line_error(NoRecurrentState, layer, empty, return_state=True)
        return
    _, state = forward(layer, empty, return_state=True)
    assert_states_close(state, layer.initial_state(BATCH))
    _, before = forward(layer, inputs(), return_state=True)
    _, after = forward(layer, empty, state=before, return_state=True)
    assert_states_close(after, before)
