"""Pallas kernels, one file per op: kernel bodies, ``pallas_call`` wrappers (``interpret=`` for
CPU), ``custom_vjp`` and block sizes. They register in their op's dispatch registry as "pallas"
(see ``ssm.ops.selective_scan``)."""
