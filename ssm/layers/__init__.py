"""Flax NNX sequence layers, one contract (``ssm.layers.base``): parallel ``__call__`` that can
start from and return a state, ``initial_state`` and a recurrent ``step``."""

from ssm.layers.base import NoRecurrentState, SequenceLayer
from ssm.layers.mamba import Mamba
from ssm.layers.registry import LAYERS, layer_options_class, register_layer
from ssm.layers.s4d import S4D

__all__ = [
    "LAYERS",
    "Mamba",
    "NoRecurrentState",
    "S4D",
    "SequenceLayer",
    "layer_options_class",
    "register_layer",
]
