"""The layer contract: what every registered sequence layer provides, stated once.

Notation: b batch, l length, d = d_model input features, d_output output features.

```
layer = Layer(d_model, *, <options>, dtype=None, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
y = layer(x, mask=None)                                  # (b, l, d_model) -> (b, l, d_output)
y, state = layer(x, mask=None, return_state=True)        # ... and the state after the last position
y = layer(x2, state=state)                               # continue from it (prefill, chunking)
state = layer.initial_state(batch_size); y_t, state = layer.step(x_t, state)   # recurrent mode
```

- ``dtype`` is the compute and output dtype (None: x's dtype promoted with ``param_dtype``, as
  in Flax); ``param_dtype`` that of ordinary parameters. SSM parameters are
  ``ssm.params.SSMParam`` and always float32.
- ``mask`` (b, l) bool marks valid positions, valid first (right padding). Padded positions
  never change valid outputs; their outputs are zero; the returned state is the one after the
  last *valid* position of each row.
- A layer without a finite recurrent state (bidirectional, long convolutions) sets
  ``recurrent = False``; asking it for a state raises ``NoRecurrentState`` (one line).
- ``output_projection = True`` marks a layer that ends with its own gated output projection
  (Mamba), so a backbone adds no activation or projection after it.

Adding a layer: subclass ``SequenceLayer`` in ``ssm/layers/<family>.py``, decorate it with
``@register_layer("name")`` (``ssm.layers.registry``), keep its keyword options annotated (they
are its config schema: ``layer=name layer.<option>=...``; an op's ``impl`` field is annotated
``OP.impl_type`` so it is checked against the live registry), and add its configurations to
``CONFIGS`` in ``tests/layers/test_conformance.py``: that suite then checks every property above.
"""

import jax.numpy as jnp
from flax import nnx


class NoRecurrentState(ValueError):
    """The layer has no finite recurrent state (initial_state, step, state in or out)."""


class SequenceLayer(nnx.Module):
    """Base class of the registered sequence layers (see the module docstring)."""

    d_model: int
    d_output: int
    output_projection = False

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

    def __call__(self, x, mask=None, *, state=None, return_state=False):
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


def check_options(layer: str, *, d_state=None, dt_range=None, channels=None) -> None:
    """One-line ValueErrors for the options SSM layers share (those given): an even ``d_state``
    >= 2, ``dt_range = (dt_min, dt_max)`` with 0 < dt_min <= dt_max, ``channels`` >= 1."""
    if d_state is not None and (d_state < 2 or d_state % 2):
        raise ValueError(f"{layer} d_state must be an even integer >= 2, got {d_state}")
    if dt_range is not None and not 0 < dt_range[0] <= dt_range[1]:
        dt_min, dt_max = dt_range
        raise ValueError(
            f"{layer} needs 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}"
        )
    if channels is not None and channels < 1:
        raise ValueError(f"{layer} channels must be >= 1, got {channels}")
