"""Data parallelism on JAX's own runtime: a 1-D ``jax.sharding.Mesh`` with the batch split over it.

Parameters and optimizer state are replicated, or with ``fsdp`` split along one axis of each
leaf (the largest the device count divides; leaves with none stay replicated). The train step is
one ``jax.jit`` with these shardings, so XLA inserts the gradient all-reduce (or the FSDP
gathers); the math is the single-device math. On several hosts ``jax.distributed.initialize``
starts the runtime (from the cluster's environment: SLURM, Open MPI, or ``JAX_COORDINATOR_*``),
each host loads its own slice of every batch, and ``global_batch`` assembles the global array.
"""

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssm.config import ConfigError

AXIS = "data"


def initialize(distributed: bool):
    """Start the multi-host runtime once (``trainer.distributed``); a no-op otherwise."""
    if distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def make_mesh(devices: int | None) -> Mesh:
    """A 1-D mesh over the first ``devices`` devices (None: all of them, on every host)."""
    available = jax.devices()
    count = len(available) if devices is None else devices
    if not 1 <= count <= len(available):
        raise ConfigError(
            f"trainer.devices={devices} is not valid; valid: 1 to {len(available)} "
            f"(the {available[0].platform} devices here), or null for all"
        )
    return Mesh(np.array(available[:count]), (AXIS,))


def check_batch(mesh: Mesh, **batch_sizes: int):
    """Raise ConfigError unless each batch size (name=value) splits evenly over the mesh."""
    for name, size in batch_sizes.items():
        if size % mesh.size:
            raise ConfigError(
                f"trainer.{name}={size} does not split over {mesh.size} devices; "
                f"use a multiple of {mesh.size} or set trainer.devices"
            )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh; every batch leaf is (b, ...)."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def leaf_sharding(leaf, mesh: Mesh, fsdp: bool) -> NamedSharding:
    """Replicated, or under ``fsdp`` split along the largest axis ``mesh.size`` divides."""
    shape = getattr(leaf, "shape", ())
    axes = [i for i, n in enumerate(shape) if n % mesh.size == 0 and n >= mesh.size]
    if not fsdp or not axes or mesh.size == 1:
        return replicated(mesh)
    axis = max(axes, key=lambda i: shape[i])
    spec = [None] * len(shape)
    spec[axis] = AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def state_shardings(state, mesh: Mesh, fsdp: bool):
    """The sharding of every leaf of a train state: params and optimizer state per
    ``leaf_sharding``; everything else (step, key, counters, BatchNorm statistics) replicated."""
    shardings = jax.tree.map(lambda _: replicated(mesh), state)
    for key in ("params", "opt_state"):
        shardings[key] = jax.tree.map(lambda x: leaf_sharding(x, mesh, fsdp), state[key])
    return shardings


def host_shard() -> tuple[int, int]:
    """(this host's index, number of hosts): which slice of every batch this host loads."""
    return jax.process_index(), jax.process_count()


def global_batch(batch: dict, sharding: NamedSharding, *, local: bool = True) -> dict:
    """A batch as global ``jax.Array``s split over the mesh: from this host's rows
    (``local``) or from the whole batch, which every host then holds."""
    if local:
        put = functools.partial(jax.make_array_from_process_local_data, sharding)
    else:

        def put(x):
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return {k: put(np.asarray(v)) for k, v in batch.items()}
