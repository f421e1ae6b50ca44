"""The Pallas selective scan (interpret mode on CPU, compiled on a GPU) beyond the registry-wide
equivalence tests of test_selective_scan.py: both block forms, tiles, padding, segment grads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm.ops import selective_scan
from ssm.ops.dispatch import DispatchError
from ssm.ops.pallas import selective_scan as pallas_scan
from ssm.ops.selective_scan import SELECTIVE_SCAN
from tests.ops.test_selective_scan import (
    TOLERANCE,
    _temp_bytes,
    assert_close,
    make_inputs,
    reference_scan,
    run,
    run_with_grads,
)

# factor_limit 0 forces the pair form everywhere; the default takes the factored one.
FORMS = {"factored": {}, "pairs": {"factor_limit": 0.0}}
ON_GPU = jax.default_backend() == "gpu"


def segments(length, seed, rate=0.15):
    starts = np.random.default_rng(seed).random((2, length)) < rate
    return jnp.asarray(np.cumsum(starts, axis=1))


# Segments of a length-37 row starting at 5, 16, 21 and 32: with blocks of 16, restarts fall
# inside blocks and on block starts, in both scan directions (37 - 21 = 16, 37 - 5 = 32).
BOUNDARY_SEGMENTS = jnp.asarray([np.searchsorted([5, 16, 21, 32], np.arange(37), "right")] * 2)


def assert_matches_reference_with_grads(inputs, dtype="float32", **kwargs):
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in pallas_options()}
    scan = functools.partial(selective_scan, impl="pallas", **options)
    (y, h), grads = run_with_grads(scan, inputs, **kwargs)
    (y_ref, h_ref), grads_ref = run_with_grads(reference_scan, inputs, **kwargs)
    assert_close(y, y_ref, TOLERANCE[dtype]["out"], "y")
    assert_close(h, h_ref, TOLERANCE[dtype]["out"], "state")
    for name, expected in grads_ref.items():
        assert jnp.all(jnp.isfinite(grads[name])), name
        assert_close(grads[name], expected, TOLERANCE[dtype]["grad"], f"d loss / d {name}")


def pallas_options():
    return ("time_block", "d_block", "factor_limit", "backend", "interpret")


@pytest.mark.parametrize(
    "form, reverse, dtype",
    [("factored", False, "float32"), ("pairs", True, "float32"), ("factored", True, "bfloat16")],
)
def test_selective_scan_pallas_matches_reference_grad_with_segment_resets(form, reverse, dtype):
    # length 37: two blocks of 16 and a ragged tail; d 12 in 2 groups of 6 channels, tiles of 4
    # (channels padded to 8 per group); n 3 (padded to 4); h0, D, z, dt_bias, softplus.
    inputs = make_inputs(5, length=37, d=12, n=3, groups=2, dtype=dtype)
    assert_matches_reference_with_grads(
        inputs,
        dtype,
        dt_softplus=True,
        reverse=reverse,
        segment_ids=BOUNDARY_SEGMENTS,
        d_block=4,
        **FORMS[form],
    )


@pytest.mark.parametrize("form", FORMS)
def test_selective_scan_pallas_matches_reference_grad_ungrouped_many_blocks(form):
    inputs = make_inputs(6, length=70, d=8, n=8, groups=0)
    assert_matches_reference_with_grads(
        inputs, dt_softplus=True, time_block=8, d_block=2, **FORMS[form]
    )


def test_selective_scan_pallas_stays_exact_where_decay_overflows_the_factored_form():
    # |Δ A| up to ~50 a step: exp(-P) of the factored form would overflow within a block, so those
    # blocks take the pair form; outputs and gradients stay finite and equal to the reference.
    inputs = make_inputs(7, length=40, d=8, n=4, groups=1)
    inputs["dt"] = jnp.abs(inputs["dt"]) * 4.0
    inputs["A"] = inputs["A"] * 10.0
    assert_matches_reference_with_grads(inputs, dt_softplus=True)


def test_selective_scan_pallas_takes_the_factored_form_where_it_is_safe(monkeypatch):
    # With the pair forms broken, well-conditioned blocks without restarts are unaffected and
    # blocks forced to the pair form are wrong: the default takes the factored form.
    for broken in ("_states_pairs", "_adjoint_pairs"):
        monkeypatch.setattr(pallas_scan, broken, lambda *args: jnp.zeros_like(args[1]))
    inputs = make_inputs(8, length=40, groups=1)
    inputs["dt"] = jnp.abs(inputs["dt"]) * 0.1  # |Δ A| summed over a block stays below the limit
    assert_matches_reference_with_grads(inputs)
    with pytest.raises(AssertionError):
        assert_matches_reference_with_grads(inputs, factor_limit=0.0)
    assert pallas_scan._factored(jnp.zeros(4), jnp.full((2, 2), -40.0), 40.0)
    assert not pallas_scan._factored(jnp.zeros(4), jnp.full((2, 2), -41.0), 40.0)
    assert not pallas_scan._factored(jnp.eye(4)[1], jnp.full((2, 2), -1.0), 40.0)


def test_selective_scan_pallas_backward_memory_is_block_states_not_every_state():
    # The residuals are the states at block starts: per extra step O(d n / T), not a (d, n) state.
    b, d, n = 1, 16, 16
    scan = functools.partial(selective_scan, impl="pallas")

    def grad(*args):
        return jax.grad(lambda *a: scan(*a).sum(), argnums=(0, 1, 2, 3, 4))(*args)

    temps = {}
    for length in (256, 1024):
        shapes = [(b, length, d), (b, length, d), (d, n), (b, length, n), (b, length, n)]
        temps[length] = _temp_bytes(grad, *[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
    per_step = (temps[1024] - temps[256]) / (1024 - 256)
    assert per_step < 0.5 * b * d * n * 4, per_step


@pytest.mark.parametrize("name, value", [("time_block", 12), ("d_block", 3)])
def test_selective_scan_pallas_rejects_block_sizes_that_are_not_powers_of_two(name, value):
    with pytest.raises(ValueError, match=f"pallas: {name} must be a power of two, got {value}"):
        run(functools.partial(selective_scan, impl="pallas", **{name: value}), make_inputs(9))


@pytest.mark.parametrize("backend, platform", [("triton", "tpu"), ("mosaic", "gpu")])
def test_selective_scan_pallas_declares_a_backend_off_its_platform_unsupported(
    monkeypatch, backend, platform
):
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    scan = functools.partial(selective_scan, impl="pallas", backend=backend, interpret=False)
    with pytest.raises(DispatchError, match=f"{backend} selective scan is compiled for .*, not"):
        run(scan, make_inputs(9, length=8))
    with pytest.raises(ValueError, match="backend 'cuda' is not valid; valid: triton, mosaic"):
        run(functools.partial(selective_scan, impl="pallas", backend="cuda"), make_inputs(9))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_selective_scan_pallas_mosaic_kernel_matches_reference_grad(reverse):
    # The TPU kernel, interpreted: length 37 in blocks of 8 with restarts on and inside blocks,
    # 12 channels in 2 groups in tiles of 4 (padded to 8 a group), n 3 (padded to 8), h0.
    inputs = make_inputs(5, length=37, d=12, n=3, groups=2)
    assert_matches_reference_with_grads(
        inputs,
        dt_softplus=True,
        reverse=reverse,
        segment_ids=BOUNDARY_SEGMENTS,
        backend="mosaic",
        time_block=8,
        d_block=4,
    )


def test_selective_scan_auto_never_picks_pallas_until_a_gpu_benchmark_shows_it_faster():
    # No GPU measurement of the kernel exists yet (benchmarks/gpu_check.sh): auto keeps the
    # measured choices on every platform and length.
    for platform in ("cpu", "gpu", "tpu"):
        for length in (16, 8192):
            assert SELECTIVE_SCAN.auto(platform, jnp.zeros((1, length, 4))) != "pallas"


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU: the compiled (Triton) kernel")
@pytest.mark.parametrize("form", FORMS)
def test_selective_scan_pallas_compiled_matches_reference_grad(form):
    inputs = make_inputs(10, length=300, d=64, n=16, groups=1)
    assert_matches_reference_with_grads(
        inputs,
        dt_softplus=True,
        segment_ids=segments(300, 10, 0.01),
        interpret=False,
        **FORMS[form],
    )
