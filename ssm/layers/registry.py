"""The layer registry: the backbone picks sequence layers by name (``layer=s4d``, ``layer=mamba``).

A registered layer is an ``nnx.Module`` constructed as ``cls(d_model, *, <options>, dtype, rngs)``
with keyword-only options (their annotations and defaults are the config schema), and provides:

- ``d_output``: the feature size of its output;
- ``__call__(x, mask=None) -> y``: parallel mode, x (b, l, d_model) -> y (b, l, d_output);
- ``initial_state(batch_size)`` and ``step(x_t, state) -> (y_t, state)``: recurrent mode,
  x_t (b, d_model) -> y_t (b, d_output).
"""

from ssm.config import options_dataclass
from ssm.registry import Registry

LAYERS = Registry("layer")
NOT_OPTIONS = ("rngs", "dtype", "param_dtype")


def register_layer(name: str):
    """Class decorator: register a sequence layer under ``name``."""
    return LAYERS.register(name)


def layer_options_class(name: str) -> type:
    """The frozen dataclass of the named layer's options (checked at config time)."""
    cls = LAYERS.get(name)
    return options_dataclass(cls.__init__, f"{cls.__name__}Options", skip=NOT_OPTIONS)
