"""Flax NNX sequence layers, each with a parallel ``__call__`` and a recurrent ``step``."""

from ssm.layers.mamba import Mamba
from ssm.layers.registry import LAYERS, layer_options_class, register_layer
from ssm.layers.s4d import S4D

__all__ = ["LAYERS", "Mamba", "S4D", "layer_options_class", "register_layer"]
