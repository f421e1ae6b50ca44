"""Backbones built from registered layers."""

from ssm.models.sequence import ModelOptions, SequenceModel

__all__ = ["ModelOptions", "SequenceModel"]
