"""Parameter types that carry their own optimisation policy."""

from flax import nnx


class SSMParam(nnx.Param):
    """A state-space parameter (A / Λ, B, C of the SSM, log Δ, A_log, dt_bias, D of selective SSMs).

    The optimizer builder labels parameters by this type: they get their own learning rate and no
    weight decay, and they are stored in float32 whatever the compute dtype.
    """
