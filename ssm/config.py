"""Typed, frozen configs built from plain mappings, with one-line errors for bad values.

The library never sees Hydra: ``experiments/`` turns YAML into plain dicts and calls
``from_mapping`` here. Keyword options of layers and datasets become frozen dataclasses through
``options_dataclass`` so they are checked the same way (names, types, ``Literal`` choices).
"""

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A config value is missing, unknown or invalid; the message says what is valid."""


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if origin is Annotated:  # Annotated[T, registry]: a T among the registry's live names()
        base, *metadata = get_args(tp)
        value = _check(value, base, where)
        for registry in metadata:
            if hasattr(registry, "names") and value not in registry.names():
                valid = ", ".join(repr(c) for c in registry.names())
                raise ConfigError(f"{where}={value!r} is not valid; valid: {valid}")
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            valid = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{where}={value!r} is not valid; valid: {valid}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _check(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}={value!r} does not match {tp}")
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
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}={value!r} must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
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
