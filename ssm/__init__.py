"""State-space sequence models in JAX (Flax NNX layers, ops, training as a library)."""

__version__ = "0.1.0"
