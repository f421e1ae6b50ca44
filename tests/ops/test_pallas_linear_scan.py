"""The Pallas linear scan (interpret mode on CPU, compiled on a GPU) beyond the registry-wide
tests of test_linear_scan.py: channel tiles, padding, trailing axes, declared limits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.ops import linear_scan
from ssm.ops.dispatch import DispatchError
from ssm.ops.linear_scan import LINEAR_SCAN
from tests.ops.test_linear_scan import (
    TOLERANCE,
    assert_close,
    make_inputs,
    reference_scan,
    run_with_grads,
)
from tests.ops.test_pallas_selective_scan import ON_GPU


def with_trailing_axes(inputs, shape):
    """The inputs' channel axis d = prod(shape) reshaped to ``shape``."""

    def reshape(v):
        return v.reshape(*v.shape[:-1], *shape)

    return {k: v if k == "segment_ids" else reshape(v) for k, v in inputs.items()}


@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("shared", [False, True], ids=["time-varying", "shared"])
def test_linear_scan_pallas_matches_reference_grad_over_channel_tiles(kind, shared):
    # trailing (2, 3): 6 channels padded to 8 in tiles of 2; length 37 in blocks of 8 (ragged).
    inputs = with_trailing_axes(make_inputs(5, d=6, kind=kind, shared=shared), (2, 3))
    if shared:
        inputs.pop("segment_ids")
    scan = functools.partial(linear_scan, impl="pallas", time_block=8, d_block=2)
    (h, state), grads = run_with_grads(scan, inputs, reverse=not shared)
    (h_ref, state_ref), grads_ref = run_with_grads(reference_scan, inputs, reverse=not shared)
    tol = TOLERANCE["float32"]
    assert_close(h, h_ref, tol["out"], "h")
    assert_close(state, state_ref, tol["out"], "state")
    for name, expected in grads_ref.items():
        assert_close(grads[name], expected, tol["grad"], f"d loss / d {name}")


def test_linear_scan_pallas_is_exact_for_zero_and_negative_decays():
    # No logarithms: a = 0 (a restart), negative and above-one factors step exactly.
    a = jnp.asarray([[[0.0], [-2.0], [1.5], [0.0], [-0.5]]])
    b = jnp.asarray([[[1.0], [2.0], [-1.0], [3.0], [1.0]]])
    h = jax.jit(functools.partial(linear_scan, impl="pallas"))(a, b, h0=jnp.asarray([[7.0]]))
    np.testing.assert_array_equal(h[0, :, 0], [1.0, 0.0, -1.0, 3.0, -0.5])


@pytest.mark.parametrize("name, value", [("time_block", 12), ("d_block", 3)])
def test_linear_scan_pallas_rejects_block_sizes_that_are_not_powers_of_two(name, value):
    inputs = make_inputs(6, kind="real")
    scan = functools.partial(linear_scan, impl="pallas", **{name: value})
    with pytest.raises(ValueError, match=f"pallas: {name} must be a power of two, got {value}"):
        scan(inputs["a"], inputs["b"])


def test_linear_scan_pallas_declares_platforms_without_a_kernel_unsupported(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    inputs = make_inputs(6, kind="real")
    with pytest.raises(DispatchError, match="compiled for GPUs only, not tpu"):
        linear_scan(inputs["a"], inputs["b"], impl="pallas", interpret=False)


def test_linear_scan_auto_never_picks_pallas_until_a_gpu_benchmark_shows_it_faster():
    for platform in ("cpu", "gpu", "tpu"):
        b = jnp.zeros((1, 8192, 4))
        assert LINEAR_SCAN.auto(platform, b, b, jnp.zeros((1, 4))) != "pallas"


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU: the compiled (Triton) kernel")
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_linear_scan_pallas_compiled_matches_reference_grad(kind):
    inputs = make_inputs(7, length=300, d=256, kind=kind)
    scan = functools.partial(linear_scan, impl="pallas", interpret=False)
    (h, state), grads = run_with_grads(scan, inputs, reverse=True)
    (h_ref, state_ref), grads_ref = run_with_grads(reference_scan, inputs, reverse=True)
    assert_close(h, h_ref, TOLERANCE["float32"]["out"], "h")
    for name, expected in grads_ref.items():
        assert_close(grads[name], expected, TOLERANCE["float32"]["grad"], name)
