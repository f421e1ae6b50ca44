"""Backbones built from registered layers."""

from ssm.models.lm import LanguageModel, load_lm, save_lm
from ssm.models.sequence import ModelOptions, SequenceModel

__all__ = ["LanguageModel", "ModelOptions", "SequenceModel", "load_lm", "save_lm"]
