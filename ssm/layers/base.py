"""The layer contract: what every registered sequence layer provides, stated once.

Notation: b batch, l length, d = d_model input features, d_output output features.

```
layer = Layer(d_model, *, <options>, dtype=None, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
y = layer(x, mask=None)                                  # (b, l, d_model) -> (b, l, d_output)
y, state = layer(x, mask=None, return_state=True)        # ... and the state after the last position
y = layer(x2, state=state)                               # continue from it (prefill, chunking)
y = layer(x, mask, segment_ids=segment_ids)              # packed rows (layers with packs_segments)
state = layer.initial_state(batch_size); y_t, state = layer.step(x_t, state)   # recurrent mode
```

- ``dtype`` is the compute and output dtype (None: x's dtype promoted with ``param_dtype``, as
  in Flax); ``param_dtype`` that of ordinary parameters. SSM parameters are
  ``ssm.params.SSMParam`` and always float32.
- ``mask`` (b, l) bool marks valid positions, valid first (right padding). Padded positions
  never change valid outputs; their outputs are zero; the returned state is the one after the
  last *valid* position of each row.
- Inputs are checked once, here, for every layer: an x that is not (b, l, d_model) (x_t not
  (b, d_model) for ``step``) or a mask that is not (b, l) is a one-line ValueError. An empty
  sequence (l = 0) gives an empty (b, 0, d_output) output and leaves the state as it was (the
  given one, else ``initial_state``).
- ``segment_ids`` (b, l) ints mark packed sequences: where the id changes a new sequence
  starts, and the outputs of a packed row equal those of its sequences run apart (the state and
  the conv window restart; an incoming ``state`` belongs to each row's first sequence; the
  returned one is that after the last valid position). The ids of padded positions do not
  matter. Only layers with ``packs_segments = True`` take them; the others (long convolutions)
  raise a one-line ValueError naming those that do.
- Constructor arguments annotated with ``ssm.config.Range`` (``d_model`` and the numeric
  options) are checked on every construction, from a config or not, with a one-line ValueError.
- A layer without a finite recurrent state (bidirectional, long convolutions) sets
  ``recurrent = False``; asking it for a state raises ``NoRecurrentState`` (one line).
- ``output_projection = True`` marks a layer that ends with its own gated output projection
  (Mamba), so a backbone adds no activation or projection after it.

Adding a layer: subclass ``SequenceLayer`` in ``ssm/layers/<family>.py``, decorate it with
``@register_layer("name")`` (``ssm.layers.registry``), keep its keyword options annotated (they
are its config schema: ``layer=name layer.<option>=...``; numbers carry their valid range,
e.g. ``PositiveInt`` from ``ssm.config``; an op's ``impl`` field is annotated ``OP.impl_type``
so it is checked against the live registry), and add its configurations to
``CONFIGS`` in ``tests/layers/test_conformance.py``: that suite then checks every property above.
"""

import functools
from typing import Annotated

import jax.numpy as jnp
from flax import nnx

from ssm.config import Range, checks_numbers
from ssm.layers.registry import LAYERS

# The state size of layers whose state is conjugate pairs (S4, S4D, DSS).
EvenStateSize = Annotated[int, Range(min=2, multiple_of=2)]


class NoRecurrentState(ValueError):
    """The layer has no finite recurrent state (initial_state, step, state in or out)."""


class SequenceLayer(nnx.Module):
    """Base class of the registered sequence layers (see the module docstring)."""

    d_model: int
    d_output: int
    output_projection = False
    packs_segments = False

    def __init_subclass__(cls, **kwargs):
        """Make a layer check its ``Range`` arguments and its inputs (see the module docstring)."""
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = checks_numbers(cls.__init__)
        if "__call__" in vars(cls):
            cls.__call__ = _checks_sequence(cls.__call__)
        if "step" in vars(cls):
            cls.step = _checks_step(cls.step)

    @property
    def recurrent(self) -> bool:
        """Whether the layer has a finite state (``initial_state``, ``step``, ``state=``)."""
        return True

    def require_state(self, what: str, reason: str | None = None) -> None:
        """Raise ``NoRecurrentState`` naming ``what`` was asked of a non-recurrent layer, and why
        (``reason``; by default that a bidirectional layer sees the future)."""
        if not self.recurrent:
            reason = reason or "(a bidirectional layer sees the future); use bidirectional=False"
            raise NoRecurrentState(
                f"{type(self).__name__} with these options has no recurrent state, so no {what} "
                + reason
            )

    def compute_dtype(self, x):
        """The dtype to compute and return in: ``dtype``, or (as Flax does) the promotion of
        x's dtype and ``param_dtype`` when ``dtype`` is None."""
        return jnp.promote_types(x.dtype, self.param_dtype) if self.dtype is None else self.dtype

    def __call__(self, x, mask=None, *, state=None, return_state=False, segment_ids=None):
        raise NotImplementedError

    def initial_state(self, batch_size: int):
        raise NotImplementedError

    def step(self, x_t, state):
        raise NotImplementedError


def canonical_dtype(dtype):
    """A jnp dtype from a dtype or its name ("bfloat16"); None stays None."""
    return None if dtype is None else jnp.dtype(dtype)


def valid_lengths(mask):
    """(b,) int32 number of valid positions per row of a (b, l) mask; None without a mask."""
    return None if mask is None else jnp.sum(mask, axis=1, dtype=jnp.int32)


def last_valid_state(states, last, mask, state=None):
    """The state after each row's last valid position, from a scan that ran through the padding.

    Args:
      states: (b, l, n) every state.   last: (b, n) the state after position l - 1.
      mask: (b, l) bool or None (then ``last``).   state: optional (b, n) state before the scan,
        kept by rows without a valid position.

    Returns:
      (b, n) in ``last``'s dtype.
    """
    lengths = valid_lengths(mask)
    if lengths is None:
        return last
    index = jnp.maximum(lengths - 1, 0)[:, None, None]
    at_last = jnp.take_along_axis(states, index, axis=1)[:, 0]
    before = jnp.zeros_like(at_last) if state is None else state.astype(at_last.dtype)
    return jnp.where((lengths > 0)[:, None], at_last, before)


def check_order(layer: str, *, strict: bool = False, **bounds: float) -> None:
    """A one-line ValueError unless the two ``bounds`` (lower first: ``dt_min=1e-3, dt_max=0.1``)
    are ordered, lower <= upper (< if ``strict``)."""
    (low_name, low), (high_name, high) = bounds.items()
    if not (low < high if strict else low <= high):
        relation = f"{low_name} {'<' if strict else '<='} {high_name}"
        raise ValueError(f"{layer} needs {relation}, got {low_name}={low}, {high_name}={high}")


def _input_error(layer: SequenceLayer, what: str, expected: str, shape) -> ValueError:
    return ValueError(f"{type(layer).__name__} expects {what} of shape {expected}, got {shape}")


def packing_layers() -> list[str]:
    """The registered layers that take ``segment_ids`` (``packs_segments``)."""
    return [name for name in LAYERS.names() if LAYERS.get(name).packs_segments]


def _packed(layer: SequenceLayer, segment_ids, mask, shape) -> dict:
    """``{"segment_ids": ...}`` checked, padded positions moved into their row's last valid
    segment (so a scan runs through the padding without restarting); {} for None."""
    if segment_ids is None:
        return {}
    if not layer.packs_segments:
        raise ValueError(
            f"{type(layer).__name__} does not take segment_ids (packed sequences); "
            f"layers that do: {', '.join(packing_layers())}"
        )
    segment_ids = jnp.asarray(segment_ids)
    if segment_ids.shape != shape[:2] or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(
            f"{type(layer).__name__} expects segment_ids of integers of shape (b, l) = "
            f"{shape[:2]}, got {segment_ids.dtype} of shape {segment_ids.shape}"
        )
    if mask is not None:
        last = jnp.maximum(valid_lengths(mask) - 1, 0)[:, None]
        segment_ids = jnp.where(mask, segment_ids, jnp.take_along_axis(segment_ids, last, axis=1))
    return {"segment_ids": segment_ids}


def _checks_sequence(call):
    """Wrap a layer's ``__call__``: check x, mask and segment_ids, and answer an empty sequence
    itself."""

    @functools.wraps(call)
    def checked(self, x, mask=None, *, state=None, return_state=False, segment_ids=None):
        shape = tuple(jnp.shape(x))
        if len(shape) != 3 or shape[-1] != self.d_model:
            raise _input_error(self, "x", f"(b, l, d_model={self.d_model})", shape)
        if mask is not None and tuple(jnp.shape(mask)) != shape[:2]:
            raise _input_error(self, "mask", f"(b, l) = {shape[:2]}", tuple(jnp.shape(mask)))
        packed = _packed(self, segment_ids, mask, shape)
        if shape[1] > 0:
            return call(self, x, mask, state=state, return_state=return_state, **packed)
        if state is not None or return_state:
            self.require_state("state in or out")
        y = jnp.zeros((shape[0], 0, self.d_output), self.compute_dtype(x))
        if not return_state:
            return y
        return y, self.initial_state(shape[0]) if state is None else state

    return checked


def _checks_step(step):
    """Wrap a layer's ``step``: check that x_t is (b, d_model)."""

    @functools.wraps(step)
    def checked(self, x_t, state):
        shape = tuple(jnp.shape(x_t))
        if len(shape) != 2 or shape[-1] != self.d_model:
            raise _input_error(self, "x_t", f"(b, d_model={self.d_model})", shape)
        return step(self, x_t, state)

    return checked
