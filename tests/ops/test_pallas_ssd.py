"""The Pallas SSD (interpret mode on CPU, compiled on a GPU) beyond the registry-wide tests of
test_ssd.py: restarts on chunk starts, strong decays, padding, memory, declared limits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.ops.dispatch import DispatchError
from ssm.ops.ssd import SSD, ssd
from tests.ops.test_pallas_selective_scan import ON_GPU
from tests.ops.test_selective_scan import _temp_bytes
from tests.ops.test_ssd import TOLERANCE, assert_close, make_inputs, run_with_grads


def assert_matches_reference_with_grads(inputs, tolerance=TOLERANCE["float32"], **options):
    (y, h), grads = run_with_grads(inputs, impl="pallas", **options)
    (y_ref, h_ref), grads_ref = run_with_grads(inputs, impl="reference")
    assert_close(y, y_ref, tolerance["out"], "y")
    assert_close(h, h_ref, tolerance["out"], "state")
    for name, expected in grads_ref.items():
        assert jnp.all(jnp.isfinite(grads[name])), name
        assert_close(grads[name], expected, tolerance["grad"], f"d loss / d {name}")


def test_ssd_pallas_matches_reference_grad_with_restarts_on_and_inside_chunks():
    # length 45 in chunks of 8 (ragged tail); segments start at 3, 8, 16, 19 and 40: on chunk
    # starts and inside chunks; p 3 and n 5 are padded to 4 and 8; h0 and grouped B, C.
    inputs = make_inputs(3, length=45, groups=2)
    starts = np.searchsorted([3, 8, 16, 19, 40], np.arange(45), "right")
    inputs["segment_ids"] = jnp.asarray([starts, starts[::-1].max() - starts[::-1]])
    assert_matches_reference_with_grads(inputs, time_block=8)


def test_ssd_pallas_stays_exact_for_strong_decays_over_long_chunks():
    # Δ A down to about -60 a step over chunks of 64: decays underflow to exactly 0, never inf.
    inputs = make_inputs(4, length=100, groups=1)
    inputs.pop("segment_ids")
    inputs["dt"] = inputs["dt"] + 3.0
    inputs["A"] = inputs["A"] * 10.0
    assert_matches_reference_with_grads(inputs, time_block=64)


def test_ssd_pallas_backward_memory_is_chunk_states_not_every_state():
    # The residuals are the states entering each chunk: per extra step O(h p n / T).
    b, heads, p, n = 1, 2, 32, 64
    scan = functools.partial(ssd, impl="pallas", time_block=32)

    def grad(*args):
        return jax.grad(lambda *a: scan(*a).sum(), argnums=(0, 1, 2, 3, 4))(*args)

    temps = {}
    for length in (256, 1024):
        shapes = [(b, length, heads, p), (b, length, heads), (heads,)] + [(b, length, 1, n)] * 2
        temps[length] = _temp_bytes(grad, *[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
    per_step = (temps[1024] - temps[256]) / (1024 - 256)
    assert per_step < 0.25 * b * heads * p * n * 4, per_step


def test_ssd_pallas_rejects_a_time_block_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="ssd pallas: time_block must be a power of two, got 12"):
        run_with_grads(make_inputs(5, length=20), impl="pallas", time_block=12)


def test_ssd_pallas_declares_platforms_without_a_kernel_unsupported(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.raises(DispatchError, match="compiled for GPUs only, not tpu"):
        run_with_grads(make_inputs(5, length=8), impl="pallas", interpret=False)


def test_ssd_auto_never_picks_pallas_until_a_gpu_benchmark_shows_it_faster():
    for platform in ("cpu", "gpu", "tpu"):
        for length in (16, 8192):
            assert SSD.auto(platform, jnp.zeros((1, length, 2, 2))) != "pallas"


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU: the compiled (Triton) kernel")
def test_ssd_pallas_compiled_matches_reference_grad():
    inputs = make_inputs(6, length=300, heads=4, p=64, groups=1, n=64)
    assert_matches_reference_with_grads(inputs, time_block=64, interpret=False)
