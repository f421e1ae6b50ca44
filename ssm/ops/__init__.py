"""Pure array functions with no parameters; every op has one public entry point."""

from ssm.ops.conv import long_conv
from ssm.ops.kernels import discretize_diagonal, vandermonde_kernel
from ssm.ops.selective_scan import selective_scan

__all__ = ["discretize_diagonal", "long_conv", "selective_scan", "vandermonde_kernel"]
