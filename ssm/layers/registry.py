"""The layer registry: backbones pick sequence layers by name (``layer=s4d``, ``layer=mamba``).

A registered layer follows the contract of ``ssm.layers.base`` (``SequenceLayer``); its
keyword-only constructor options (annotations and defaults) are its config schema.
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
