"""Backbones built from registered layers."""

from ssm.models.lm import LanguageModel, generate, load_lm, save_lm
from ssm.models.sequence import ModelOptions, SequenceModel

__all__ = [
    "LanguageModel",
    "ModelOptions",
    "SequenceModel",
    "generate",
    "load_lm",
    "save_lm",
]
