"""Backbones built from registered layers."""

from ssm.models.lm import MambaLM, load_lm, save_lm
from ssm.models.sequence import ModelOptions, SequenceModel

__all__ = ["MambaLM", "ModelOptions", "SequenceModel", "load_lm", "save_lm"]
