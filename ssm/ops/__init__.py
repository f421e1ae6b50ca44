"""Pure array functions with no parameters; every op has one public entry point and a registry
of implementations behind ``ssm.ops.dispatch``."""

from ssm.ops.conv import depthwise_conv, long_conv
from ssm.ops.kernels import diagonal_ssm_step, discretize_diagonal, vandermonde_kernel
from ssm.ops.linear_scan import linear_scan
from ssm.ops.selective_scan import selective_scan, selective_state_update
from ssm.ops.ssd import ssd

__all__ = [
    "depthwise_conv",
    "diagonal_ssm_step",
    "discretize_diagonal",
    "linear_scan",
    "long_conv",
    "selective_scan",
    "selective_state_update",
    "ssd",
    "vandermonde_kernel",
]
