"""Hydra entry points; the library (``ssm``) never imports Hydra."""
