"""The one dispatch mechanism of every op: a registry of implementations, ``auto``, fallback.

An op (``selective_scan``, ``long_conv``, ...) owns an ``Op``: its implementations share one
signature and register by name; ``impl="auto"`` asks the op's rule which one serves the call
(from the platform, the arguments' shapes and dtypes). An implementation that *declares* it
cannot serve a call raises ``Unsupported`` (wrong platform, shape outside its limits); the call
then runs the op's reference with a one-line warning. Any other exception propagates: a broken
kernel fails its tests instead of hiding behind the reference. In strict mode every fallback is
an error; the test suite runs strict (``SSM_STRICT_DISPATCH=1``, or ``with strict():``).

Adding an implementation: ``@OP.register("name")`` on a function with the op's implementation
signature (the shared arguments positional; its own options, such as ``chunk_size``, keyword-only
with defaults), raising ``Unsupported`` where it cannot serve. The op's equivalence tests in
``tests/ops/`` run over every registered name, so they cover it at once.
"""

import contextlib
import inspect
import os
import threading
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import jax

STRICT_ENV = "SSM_STRICT_DISPATCH"
_local = threading.local()


class Unsupported(Exception):
    """Raised by an implementation that cannot serve this call (platform, shape, dtype)."""


class DispatchError(RuntimeError):
    """A fallback was needed in strict mode."""


def is_strict() -> bool:
    """True inside ``strict()`` or when the environment sets ``SSM_STRICT_DISPATCH=1``."""
    override = getattr(_local, "strict", None)
    if override is not None:
        return override
    return os.environ.get(STRICT_ENV, "0") not in ("", "0", "false", "False")


@contextlib.contextmanager
def strict(enabled: bool = True):
    """Within the block, a fallback to the reference raises ``DispatchError`` (or, not)."""
    previous = getattr(_local, "strict", None)
    _local.strict = enabled
    try:
        yield
    finally:
        _local.strict = previous


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


class Op:
    """The registry of one op's implementations, its ``auto`` rule and its fallback policy.

    Args:
      name: the op's public name, used in messages.
      auto: ``auto(platform, *args, **kwargs) -> name`` picks the implementation for a call.
      reference: the implementation that every other one falls back to.
    """

    def __init__(self, name: str, *, auto: Callable[..., str], reference: str = "reference"):
        self.name, self.auto, self.reference = name, auto, reference
        self._impls: dict[str, Callable] = {}

    def register(self, impl: str) -> Callable[[Callable], Callable]:
        """Decorator: register an implementation under ``impl``."""

        def add(fn):
            if impl in self._impls or impl == "auto":
                raise ValueError(f"{self.name} impl {impl!r} is registered twice")
            self._impls[impl] = fn
            return fn

        return add

    def names(self) -> list[str]:
        """Every valid ``impl``: "auto" and the registered names, sorted."""
        return ["auto", *sorted(self._impls)]

    def __contains__(self, impl: str) -> bool:
        return impl in self._impls

    def get(self, impl: str) -> Callable:
        """The implementation registered as ``impl`` (not "auto")."""
        self.check(impl)
        return self._impls[impl]

    def check(self, impl: str, where: str | None = None) -> str:
        """``impl`` if it is "auto" or registered, else a one-line ValueError listing the valid."""
        if impl != "auto" and impl not in self._impls:
            where = where or f"{self.name} impl"
            raise ValueError(f"unknown {where} {impl!r}; valid: {', '.join(self.names())}")
        return impl

    @property
    def impl_type(self):
        """A config annotation: a string checked against this live registry at config time."""
        return Annotated[str, self]

    def __call__(self, impl: str, *args, options: dict[str, Any] | None = None, **kwargs):
        """Run ``impl`` (or the one ``auto`` picks) on the arguments.

        ``options`` are implementation-specific keywords (``chunk_size``, block sizes); naming
        one the implementation does not take is an error. A fallback to the reference drops them.
        """
        name = self.check(impl)
        if name == "auto":
            name = self.check(self.auto(jax.default_backend(), *args, **kwargs))
        fn = self._impls[name]
        options = dict(options or {})
        self._check_options(name, fn, options)
        if name == self.reference:
            return fn(*args, **kwargs, **options)
        try:
            return fn(*args, **kwargs, **options)
        except Unsupported as error:
            message = f"{self.name} impl {name!r} cannot serve this call ({first_line(error)})"
            if is_strict():
                raise DispatchError(f"{message}; strict dispatch allows no fallback") from error
            warnings.warn(f"{message}; falling back to {self.reference!r}", stacklevel=3)
        return self._impls[self.reference](*args, **kwargs)

    def _check_options(self, name: str, fn: Callable, options: dict[str, Any]) -> None:
        if not options:
            return
        parameters = inspect.signature(fn).parameters
        accepted = [p for p, v in parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise ValueError(
                f"{self.name} impl {name!r} takes no option {unknown[0]!r}; its options: {valid}"
            )
