"""Typed, frozen configs built from plain mappings, with one-line errors for bad values.

The library never sees Hydra: ``experiments/`` turns YAML into plain dicts and calls
``from_mapping`` here. Keyword options of layers and datasets become frozen dataclasses through
``options_dataclass`` so they are checked the same way (names, types, ``Literal`` choices,
``Range`` bounds); ``checks_numbers`` makes a constructor check its ``Range`` arguments itself.
"""

import dataclasses
import functools
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A config value is missing, unknown or invalid; the message says what is valid."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid numbers of an ``Annotated[int, Range(min=1)]`` or ``Annotated[float, ...]``.

    Attributes:
        min, max: the bounds (None: unbounded), included unless ``min_open`` / ``max_open``.
        multiple_of: integers only, what the value must be divisible by (None: anything).
    """

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    multiple_of: int | None = None

    def __contains__(self, value) -> bool:
        if self.min is not None and not (value > self.min if self.min_open else value >= self.min):
            return False
        if self.max is not None and not (value < self.max if self.max_open else value <= self.max):
            return False
        return self.multiple_of is None or value % self.multiple_of == 0

    def describe(self, number: str) -> str:
        """The valid values in words, e.g. ``an integer >= 1`` for ``number="an integer"``."""
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            text = f"{number} in {left}{self.min:g}, {self.max:g}{right}"
        elif self.min is not None:
            text = f"{number} {'>' if self.min_open else '>='} {self.min:g}"
        elif self.max is not None:
            text = f"{number} {'<' if self.max_open else '<='} {self.max:g}"
        else:
            text = number
        return text if self.multiple_of is None else f"{text} divisible by {self.multiple_of}"


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
PositiveFloat = Annotated[float, Range(min=0, min_open=True)]
NonNegativeFloat = Annotated[float, Range(min=0)]
Fraction = Annotated[float, Range(0, 1, max_open=True)]  # [0, 1): a dropout or decay rate

_KINDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    type(None): "null",
}


def _describe(tp: Any) -> str:
    """The valid values of the annotation ``tp`` in words, for error messages."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *metadata = get_args(tp)
        text = _describe(base)
        for marker in metadata:
            if isinstance(marker, Range):
                text = marker.describe(text)
            elif hasattr(marker, "names"):
                text = ", ".join(repr(c) for c in marker.names())
        return text
    if origin is Literal:
        return ", ".join(repr(c) for c in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in get_args(tp))
    return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if origin is Annotated:  # Annotated[T, Range(...) or registry (a T among its live names())]
        base, *metadata = get_args(tp)
        checked = _check(value, base, where)
        for marker in metadata:
            if (isinstance(marker, Range) and checked not in marker) or (
                hasattr(marker, "names") and checked not in marker.names()
            ):
                raise ConfigError(f"{where}={value!r} is not valid; valid: {_describe(tp)}")
        return checked
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            valid = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{where}={value!r} is not valid; valid: {valid}")
        return value
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _check(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}={value!r} is not valid; valid: {_describe(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}={value!r} must be null")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}={value!r} must be a list")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_check(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where}={value!r} must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where}={value!r} must be an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}={value!r} must be a mapping")
        return dict(value)
    return value


def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str = "config"):
    """Build the frozen dataclass ``cls`` from a mapping, checking names, types and choices."""
    if isinstance(mapping, cls):
        return mapping
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]}; valid keys of {where}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for name, field in fields.items():
        if name in mapping:
            values[name] = _check(mapping[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {where}.{name}")
    return cls(**values)


def options_dataclass(
    fn: Callable, name: str, skip: tuple[str, ...] = (), extra: tuple[tuple, ...] = ()
) -> type:
    """A frozen dataclass of ``fn``'s keyword-only options (annotations and defaults kept).

    Used so a layer's or dataset's constructor is the single source of its options; ``extra``
    appends ``(name, type, field)`` entries that the caller handles itself.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in skip:
            continue
        if p.default is inspect.Parameter.empty:
            fields.append((p.name, hints.get(p.name, Any)))
        else:
            fields.append((p.name, hints.get(p.name, Any), dataclasses.field(default=p.default)))
    return dataclasses.make_dataclass(name, [*fields, *extra], frozen=True)


def options_of(config) -> dict[str, Any]:
    """The fields of a frozen options dataclass as keyword arguments."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _has_range(tp: Any) -> bool:
    if get_origin(tp) is Annotated:
        return any(isinstance(marker, Range) for marker in get_args(tp)[1:])
    return any(_has_range(arg) for arg in get_args(tp))


def checks_numbers(fn: Callable) -> Callable:
    """Decorator: ``fn`` first checks its arguments annotated with a ``Range`` (also inside
    ``| None`` or ``tuple[...]``) and raises a one-line ConfigError naming a bad one.

    The error names the argument after the class of ``self`` (methods) or ``fn``'s name, e.g.
    ``Mamba d_state=0 is not valid; valid: an integer >= 1``.
    """
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    ranged = [name for name in signature.parameters if _has_range(hints.get(name))]

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        owner = type(arguments["self"]).__name__ if "self" in arguments else fn.__name__
        for name in ranged:
            if name in arguments:
                _check(arguments[name], hints[name], f"{owner} {name}")
        return fn(*args, **kwargs)

    return checked
