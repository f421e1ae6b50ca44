"""Every Pallas kernel lowers for its backend, forward and backward, on any machine.

JAX lowers a Triton ``pallas_call`` without a GPU (for compute capability 9.0), and a Mosaic one
without a TPU once told a TPU generation, so a primitive the backend cannot lower
("Unimplemented primitive", a slice of an in-register array, a reverse cumsum, a cumsum on TPU)
fails here, in the CPU suite, not first on the accelerator. Compiling the lowered kernel to a
binary, and running it, still needs the device (the ``compiled`` tests of each kernel's file).
"""

import jax
import jax.numpy as jnp
import pytest
from jax._src.pallas.mosaic import tpu_info

from ssm.ops.pallas import linear_scan, selective_scan, ssd

B, L = 2, 64


def kernels():
    """name -> (function of the differentiable arrays, those arrays)."""
    d, n, g, heads, p = 64, 16, 2, 4, 64
    restart = jnp.zeros((B, L), bool).at[:, 10].set(True)
    return {
        "selective_scan": (
            lambda x, dt, A, Bm, Cm, h0: selective_scan.selective_scan(
                x, dt, A, Bm, Cm, h0, restart, interpret=False
            ),
            [(B, L, d), (B, L, d), (d, n), (B, L, g, n), (B, L, g, n), (B, d, n)],
        ),
        "ssd": (
            lambda x, dt, A, Bm, Cm, h0: ssd.ssd(x, dt, A, Bm, Cm, h0, restart, interpret=False),
            [
                (B, L, heads, p),
                (B, L, heads),
                (heads,),
                (B, L, 1, n),
                (B, L, 1, n),
                (B, heads, p, n),
            ],
        ),
        "linear_scan": (
            lambda a, b, h0: linear_scan.linear_scan(a, b, h0, interpret=False),
            [(B, L, 8, 32), (B, L, 8, 32), (B, 8, 32)],
        ),
        "linear_scan_complex_shared": (
            lambda a, b, h0: linear_scan.linear_scan(a, b, h0, interpret=False),
            [(8, 32), (B, L, 8, 32), (B, 8, 32)],
        ),
    }


def lowered_text(fn, shapes, dtype):
    arrays = [jax.ShapeDtypeStruct(shape, dtype) for shape in shapes]
    return jax.jit(fn).trace(*arrays).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("name", list(kernels()))
def test_pallas_kernel_lowers_to_triton_forward_and_backward(monkeypatch, name):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as the wrappers see a GPU
    fn, shapes = kernels()[name]
    dtype = jnp.complex64 if "complex" in name else jnp.float32

    def loss(*arrays):
        return sum(jnp.sum(jnp.real(out)) for out in jax.tree.leaves(fn(*arrays)))

    forward = lowered_text(fn, shapes, dtype)
    backward = lowered_text(jax.grad(loss, argnums=tuple(range(len(shapes)))), shapes, dtype)
    assert forward.count("xla.gpu.triton") == 1
    assert backward.count("xla.gpu.triton") == 2  # forward (saving residuals) and backward


def test_pallas_kernels_refuse_blocks_below_the_smallest_triton_matmul_on_a_gpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    fn, shapes = kernels()["ssd"]
    arrays = [jnp.zeros(shape) for shape in shapes]
    with pytest.raises(ValueError, match="ssd pallas: time_block must be >= 16 on a GPU, got 8"):
        ssd.ssd(*arrays, None, time_block=8, interpret=False)
    x = jnp.zeros((B, L, 8))
    with pytest.raises(ValueError, match="time_block must be >= 16 on a GPU, got 8"):
        selective_scan.selective_scan(
            x, x, jnp.zeros((8, 4)), jnp.zeros((B, L, 1, 4)), jnp.zeros((B, L, 1, 4)),
            jnp.zeros((B, 8, 4)), None, time_block=8, interpret=False,
        )  # fmt: skip


def test_pallas_selective_scan_mosaic_kernel_lowers_for_tpu_forward_and_backward(monkeypatch):
    # Lowering asks the device for its TPU generation: answer for a v5e (one core).
    monkeypatch.setattr(tpu_info, "get_device_kind", lambda: "TPU v5 lite")
    monkeypatch.setattr(tpu_info, "get_num_device_cores", lambda: 1)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    d, n = 256, 16  # a channel tile of 128 lanes
    restart = jnp.zeros((B, 128), bool).at[:, 70].set(True)

    def fn(x, dt, A, Bm, Cm, h0):
        return selective_scan.selective_scan(x, dt, A, Bm, Cm, h0, restart, interpret=False)

    def loss(*arrays):
        return sum(jnp.sum(out) for out in fn(*arrays))

    shapes = [(B, 128, d), (B, 128, d), (d, n), (B, 128, 1, n), (B, 128, 1, n), (B, d, n)]
    arrays = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]

    def lowered(f):
        return jax.jit(f).trace(*arrays).lower(lowering_platforms=("tpu",)).as_text()

    assert lowered(fn).count("tpu_custom_call") == 1
    assert lowered(jax.grad(loss, argnums=tuple(range(6)))).count("tpu_custom_call") == 2
