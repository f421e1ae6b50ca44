"""Flax NNX sequence layers, one contract (``ssm.layers.base``): parallel ``__call__`` that can
start from and return a state, ``initial_state`` and a recurrent ``step``."""

from ssm.layers.base import NoRecurrentState, SequenceLayer
from ssm.layers.dss import DSS
from ssm.layers.lru import LRU
from ssm.layers.mamba import Mamba
from ssm.layers.mamba2 import Mamba2
from ssm.layers.registry import LAYERS, layer_options_class, register_layer
from ssm.layers.rglru import RGLRU
from ssm.layers.s4 import S4
from ssm.layers.s4d import S4D
from ssm.layers.s5 import S5
from ssm.layers.sgconv import SGConv

__all__ = [
    "DSS",
    "LAYERS",
    "LRU",
    "Mamba",
    "Mamba2",
    "NoRecurrentState",
    "RGLRU",
    "S4",
    "S4D",
    "S5",
    "SGConv",
    "SequenceLayer",
    "layer_options_class",
    "register_layer",
]
