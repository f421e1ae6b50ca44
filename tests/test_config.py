"""Numbers in configs: each option declares its valid range, and a value outside it fails at
start-up with one line naming the option and the range (ssm/config.py's ``Range``)."""

import dataclasses
import math
import types
import typing
from typing import Annotated, Union

import numpy as np
import pytest
from flax import nnx

from ssm.config import ConfigError, PositiveInt, Range, checks_numbers, from_mapping
from ssm.data.registry import DATASETS, dataset_options_class
from ssm.layers.registry import LAYERS, layer_options_class
from ssm.models import SequenceModel
from ssm.train.config import GROUPS, experiment_config

RAW = {"layer": {"name": "s4d"}, "dataset": {"name": "copying"}}
# Numeric options whose owners have not declared a range yet (ssm/data/corpus.py, pathfinder.py).
UNDECLARED: set[str] = set()  # numeric options allowed without a Range (none today)


def config_with(group, option, value):
    return experiment_config({**RAW, group: {**RAW.get(group, {}), option: value}})


@pytest.mark.parametrize(
    "group, option, value, valid",
    [
        ("trainer", "batch_size", -3, "an integer >= 1"),
        ("trainer", "batch_size", 0, "an integer >= 1"),
        ("model", "dropout", 1.5, "a number in [0, 1)"),
        ("layer", "d_state", 0, "an integer >= 2 divisible by 2"),
        ("model", "d_model", 0, "an integer >= 1"),
        ("trainer", "log_every", 0, "an integer >= 1"),
        ("optimizer", "lr", -1, "a number >= 0"),
        ("model", "n_layers", 0, "an integer >= 1"),
        ("trainer", "checkpoint_every", -1, "an integer >= 1 or null"),
        ("trainer", "eval_batch_size", 0, "an integer >= 1 or null"),
        ("scheduler", "warmup_steps", -5, "an integer >= 0"),
        ("trainer", "max_steps", 0, "an integer >= 1 or null"),
        ("trainer", "mask_rate", 0, "a number in (0, 1)"),
        ("optimizer", "b2", 1.0, "a number in [0, 1)"),
        ("optimizer", "grad_clip", 0.0, "a number > 0 or null"),
        ("scheduler", "end_ratio", 1.5, "a number in [0, 1]"),
        ("dataset", "num_tokens", 0, "an integer >= 1"),
    ],
)
def test_experiment_config_rejects_an_out_of_range_number_in_one_line_naming_it(
    group, option, value, valid
):
    with pytest.raises(ConfigError) as error:
        config_with(group, option, value)
    assert str(error.value) == f"{group}.{option}={value!r} is not valid; valid: {valid}"


@pytest.mark.parametrize(
    "group, option, value",
    [
        ("optimizer", "lr", 0),
        ("optimizer", "b1", 0.0),
        ("scheduler", "warmup_steps", 0),
        ("scheduler", "end_ratio", 1),
        ("model", "dropout", 0.0),
        ("trainer", "batch_size", 1),
        ("trainer", "max_steps", None),
        ("layer", "d_state", 2),
    ],
)
def test_experiment_config_accepts_a_number_on_the_edge_of_its_range(group, option, value):
    config = config_with(group, option, value)
    assert getattr(getattr(config, group), option) == value


@pytest.mark.parametrize(
    "marker, kind, text",
    [
        (Range(min=1), "an integer", "an integer >= 1"),
        (Range(min=0, min_open=True), "a number", "a number > 0"),
        (Range(max=1e-3, max_open=True), "a number", "a number < 0.001"),
        (Range(0, 1, max_open=True), "a number", "a number in [0, 1)"),
        (Range(0, 1, min_open=True), "a number", "a number in (0, 1]"),
        (Range(min=2, multiple_of=2), "an integer", "an integer >= 2 divisible by 2"),
    ],
)
def test_range_describes_its_valid_values(marker, kind, text):
    assert marker.describe(kind) == text


@dataclasses.dataclass(frozen=True)
class Options:
    count: PositiveInt = 1
    rate: Annotated[float, Range(0, 1, min_open=True)] = 0.5


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(count=True), "options.count=True must be an integer"),
        (dict(count=1.0), "options.count=1.0 must be an integer"),
        (dict(rate=math.nan), "options.rate=nan is not valid; valid: a number in (0, 1]"),
        (dict(rate=0), "options.rate=0 is not valid; valid: a number in (0, 1]"),
    ],
)
def test_range_refuses_bools_floats_for_integers_and_nan(options, message):
    with pytest.raises(ConfigError) as error:
        from_mapping(Options, options, "options")
    assert str(error.value) == message


def test_range_accepts_numpy_numbers_and_converts_integers_for_floats():
    options = from_mapping(Options, dict(count=np.int64(3), rate=1), "options")
    assert options == Options(count=3, rate=1.0) and isinstance(options.rate, float)


def test_checks_numbers_makes_a_library_call_check_its_ranges():
    @checks_numbers
    def window(size: PositiveInt, *, stride: PositiveInt | None = None):
        return size, stride

    assert window(3, stride=None) == (3, None)
    with pytest.raises(ConfigError, match=r"^window stride=0 is not valid; valid: an integer >= 1"):
        window(3, stride=0)
    with pytest.raises(ValueError, match=r"^SequenceModel dropout=1.5 is not valid; valid: a"):
        SequenceModel(num_classes=2, vocab_size=4, dropout=1.5, rngs=nnx.Rngs(0))


def numeric_options_without_range(where, cls):
    """``where.name`` of every int or float field of ``cls`` that declares no ``Range``."""
    missing = []
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        options = (
            typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        )
        for option in options:
            base = typing.get_args(option)[0] if typing.get_origin(option) is tuple else option
            if base in (int, float):
                missing.append(f"{where}.{name}")
    return missing


def test_every_numeric_option_declares_its_valid_range():
    classes = dict(GROUPS)
    classes |= {f"layer {name}": layer_options_class(name) for name in LAYERS.names()}
    classes |= {
        f"dataset {name}": dataset_options_class(name)
        for name in DATASETS.names()
        if DATASETS.get(name).__module__.startswith("ssm.")  # not tests' or benchmarks' own
    }
    missing = [
        option
        for where, cls in classes.items()
        for option in numeric_options_without_range(where, cls)
        if option not in UNDECLARED
    ]
    assert missing == []
