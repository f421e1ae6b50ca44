"""Every linear_scan implementation equals the step-by-step reference, which equals NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm.ops import linear_scan, reference
from ssm.ops.dispatch import DispatchError, Unsupported, strict
from ssm.ops.linear_scan import LINEAR_SCAN

# |actual - expected| <= tol * (|expected| + max |expected|), per dtype of b; the state is
# float32 inside every implementation, so bf16 differs by input and output rounding only.
TOLERANCE = {
    "float32": {"out": 1e-5, "grad": 1e-4},
    "bfloat16": {"out": 1e-2, "grad": 2e-2},
}
IMPLS = [name for name in LINEAR_SCAN.names() if name != "auto"]  # the live registry
FAST_IMPLS = [name for name in IMPLS if name != "reference"]
CHUNK = {"chunked": {"chunk_size": 8}}  # small chunks: several of them and a ragged tail


def make_inputs(seed, b=2, length=37, d=3, kind="complex", shared=False, dtype="float32"):
    """Stable decays a (|a| < 1), inputs b, a state h0 and packed segment ids (b, l)."""
    rng = np.random.default_rng(seed)
    a_shape = (d,) if shared else (b, length, d)
    a = rng.uniform(0.5, 0.99, a_shape)
    if kind == "complex":
        a = a * np.exp(1j * rng.uniform(0, np.pi, a_shape))
    x = rng.standard_normal((b, length, d))
    h0 = rng.standard_normal((b, d)) + (
        1j * rng.standard_normal((b, d)) if kind == "complex" else 0
    )
    starts = rng.random((b, length)) < 0.1
    return {
        "a": jnp.asarray(a, jnp.complex64 if kind == "complex" else dtype),
        "b": jnp.asarray(x, dtype),  # real b: a complex a makes the states complex
        "h0": jnp.asarray(h0, jnp.complex64 if kind == "complex" else jnp.float32),
        "segment_ids": jnp.asarray(np.cumsum(starts, axis=1), jnp.int32),
    }


def numpy_scan(a, b, h0, reverse, segment_ids=None):
    """h_t = a_t h_{t-1} + b_t in complex128, restarting at each new segment."""
    a, b, h0 = (np.asarray(v).astype(np.complex128) for v in (a, b, h0))
    seg = np.zeros(b.shape[:2]) if segment_ids is None else np.asarray(segment_ids)
    a = np.broadcast_to(a, b.shape)
    order = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    h, hs, previous = h0, np.zeros_like(b), None
    for t in order:
        restart = False if previous is None else seg[:, t] != seg[:, previous]
        restart = np.reshape(restart, (-1,) + (1,) * (b.ndim - 2))
        h = np.where(restart, 0, a[:, t] * h) + b[:, t]
        hs[:, t], previous = h, t
    return hs, h


def call(fn, inputs, **kwargs):
    """fn(a, b, h0=, segment_ids=, return_state=True, **kwargs) -> (h, state)."""
    extra = {k: inputs.get(k) for k in ("h0", "segment_ids")}
    return fn(inputs["a"], inputs["b"], **extra, return_state=True, **kwargs)


def reference_scan(a, b, *, return_state, **kwargs):
    return reference.linear_scan(a, b, **kwargs)


def run_with_grads(fn, inputs, **kwargs):
    """(h, state) and the gradients of a fixed random projection of both wrt a, b and h0."""
    rng = np.random.default_rng(99)
    w_h = jnp.asarray(rng.standard_normal(inputs["b"].shape), jnp.float32)
    w_s = jnp.asarray(rng.standard_normal(inputs["h0"].shape), jnp.float32)
    differentiable = ("a", "b", "h0")

    def loss(values):
        h, state = call(fn, {**inputs, **values}, **kwargs)
        h = h.astype(jnp.complex64 if jnp.iscomplexobj(h) else jnp.float32)
        total = jnp.sum(h * w_h) + jnp.sum(state * w_s)
        return jnp.real(total) + jnp.imag(total), (h, state)

    values = {k: inputs[k] for k in differentiable}
    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(values)
    return outputs, grads


def assert_close(actual, expected, tol, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("shared", [False, True], ids=["time-varying", "shared"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_linear_scan_reference_equals_a_numpy_loop_with_segment_restarts(kind, reverse, shared):
    inputs = make_inputs(0, kind=kind, shared=shared)
    h, state = reference.linear_scan(**inputs, reverse=reverse)
    h_np, state_np = numpy_scan(**inputs, reverse=reverse)
    assert_close(h, h_np, 1e-5, "h")
    assert_close(state, state_np, 1e-5, "state")


# Every impl on each pair of (kind, dtype, variant) values, in four combinations.
COMBINATIONS = [
    ("real", "float32", "time-varying-reverse-segments"),
    ("real", "bfloat16", "shared-forward"),
    ("complex", "float32", "shared-forward"),
    ("complex", "bfloat16", "time-varying-reverse-segments"),
]
CASES = [
    pytest.param(impl, *combination, id="-".join([impl, *combination]))
    for impl in IMPLS
    for combination in COMBINATIONS
]


@pytest.mark.parametrize("impl, kind, dtype, variant", CASES)
def test_linear_scan_impl_matches_reference_outputs_and_grads(impl, kind, dtype, variant):
    shared = variant.startswith("shared")
    inputs = make_inputs(1, kind=kind, shared=shared, dtype=dtype)
    options = dict(reverse=variant.endswith("segments"))
    if shared:
        inputs.pop("segment_ids")
    (h, state), grads = run_with_grads(
        functools.partial(linear_scan, impl=impl, **CHUNK.get(impl, {})), inputs, **options
    )
    (h_ref, state_ref), grads_ref = run_with_grads(reference_scan, inputs, **options)
    tol = TOLERANCE[dtype]
    assert state.dtype == (jnp.complex64 if kind == "complex" else jnp.float32)
    assert_close(h, h_ref, tol["out"], "h")
    assert_close(state, state_ref, tol["out"], "state")
    for name, expected in grads_ref.items():
        assert grads[name].dtype == inputs[name].dtype
        assert_close(grads[name], expected, tol["grad"], f"d loss / d {name}")


def test_linear_scan_returns_states_in_the_inputs_dtype():
    inputs = make_inputs(2, kind="real", dtype="bfloat16")
    h, state = call(linear_scan, inputs)
    assert h.dtype == jnp.bfloat16 and state.dtype == jnp.float32
    complex_inputs = make_inputs(2, kind="complex", dtype="bfloat16")
    assert call(linear_scan, complex_inputs)[0].dtype == jnp.complex64


@settings(max_examples=5, deadline=None)
@given(
    impl=st.sampled_from(FAST_IMPLS),
    length=st.integers(1, 40),
    chunk_size=st.integers(1, 16),
    trailing=st.sampled_from([(), (3,), (2, 2)]),
    shared=st.booleans(),
    reverse=st.booleans(),
    segments=st.booleans(),
)
def test_linear_scan_impl_matches_reference_any_shape_and_options(
    impl, length, chunk_size, trailing, shared, reverse, segments
):
    rng = np.random.default_rng(length)
    shape = (2, length, *trailing)
    a = jnp.asarray(rng.uniform(0.5, 1.0, trailing if shared else shape), jnp.float32)
    b = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    seg = jnp.asarray(np.cumsum(rng.random((2, length)) < 0.2, axis=1)) if segments else None
    kwargs = dict(reverse=reverse, return_state=True)
    extra = {"chunk_size": chunk_size} if impl == "chunked" else {}
    h, state = jax.jit(functools.partial(linear_scan, **kwargs, impl=impl, **extra))(
        a, b, segment_ids=seg
    )
    h_np, state_np = numpy_scan(a, b, np.zeros(state.shape), reverse, seg)
    assert_close(h, h_np.real, 1e-5, "h")
    assert_close(state, state_np.real, 1e-5, "state")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("impl", IMPLS)
def test_linear_scan_split_with_state_equals_whole_sequence(impl, reverse):
    inputs = make_inputs(3, length=40)
    inputs.pop("segment_ids")
    k = 20
    first, second = (slice(None, k), slice(k, None)) if not reverse else (slice(k, None), slice(k))
    scan = jax.jit(functools.partial(linear_scan, impl=impl, reverse=reverse, return_state=True))
    h_whole, state_whole = scan(inputs["a"], inputs["b"], h0=inputs["h0"])
    h_first, mid = scan(inputs["a"][:, first], inputs["b"][:, first], h0=inputs["h0"])
    h_second, last = scan(inputs["a"][:, second], inputs["b"][:, second], h0=mid)
    h_split = jnp.concatenate([h_first, h_second] if not reverse else [h_second, h_first], 1)
    assert_close(h_split, h_whole, 1e-5, "h")
    assert_close(last, state_whole, 1e-5, "state")


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_scan_segments_equal_each_segment_run_alone_from_zero(impl):
    inputs = make_inputs(4, b=1, length=30)
    segment_ids = jnp.asarray([[0] * 7 + [1] * 15 + [2] * 8])
    scan = jax.jit(functools.partial(linear_scan, impl=impl))
    h = scan(inputs["a"], inputs["b"], segment_ids=segment_ids)
    for start, stop in [(0, 7), (7, 22), (22, 30)]:
        alone = scan(inputs["a"][:, start:stop], inputs["b"][:, start:stop])
        assert_close(h[:, start:stop], alone, 1e-5, f"segment {start}:{stop}")


def test_linear_scan_auto_picks_by_platform_and_runs_that_impl():
    inputs = make_inputs(5)
    assert LINEAR_SCAN.auto("cpu", inputs["a"], inputs["b"], inputs["h0"]) == "reference"
    assert LINEAR_SCAN.auto("gpu", inputs["a"], inputs["b"], inputs["h0"]) == "associative"
    chosen = LINEAR_SCAN.auto(jax.default_backend(), inputs["a"], inputs["b"], inputs["h0"])
    h = jax.jit(linear_scan)(inputs["a"], inputs["b"])
    assert_close(
        h, jax.jit(functools.partial(linear_scan, impl=chosen))(inputs["a"], inputs["b"]), 0
    )


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_linear_scan_broken_impl_raises_instead_of_falling_back(monkeypatch, impl):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel bug")

    monkeypatch.setitem(LINEAR_SCAN._impls, impl, broken)
    inputs = make_inputs(6)
    with strict(False), pytest.raises(RuntimeError, match="kernel bug"):
        linear_scan(inputs["a"], inputs["b"], impl=impl)


def test_linear_scan_unsupported_impl_warns_and_returns_the_reference(monkeypatch):
    def unsupported(*args, **kwargs):
        raise Unsupported("no kernel for complex inputs")

    monkeypatch.setitem(LINEAR_SCAN._impls, "associative", unsupported)
    inputs = make_inputs(6)
    with strict(False), pytest.warns(UserWarning, match="falling back to 'reference'"):
        h = linear_scan(inputs["a"], inputs["b"], impl="associative")
    assert_close(h, reference.linear_scan(inputs["a"], inputs["b"])[0], 0)
    with pytest.raises(DispatchError, match="strict dispatch allows no fallback"):
        linear_scan(inputs["a"], inputs["b"], impl="associative")


def test_linear_scan_passes_chunk_size_through_and_rejects_unknown_options():
    inputs = make_inputs(7)
    a, b = inputs["a"], inputs["b"]
    assert_close(
        linear_scan(a, b, impl="chunked", chunk_size=5), reference.linear_scan(a, b)[0], 1e-5
    )
    with pytest.raises(ValueError, match="impl 'associative' takes no option 'chunk_size'"):
        linear_scan(a, b, impl="associative", chunk_size=3)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        linear_scan(a, b, impl="chunked", chunk_size=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_scan_computes_float64_inputs_in_float64(impl):
    with jax.enable_x64(True):
        inputs = make_inputs(8, kind="real")
        a, b = inputs["a"].astype(jnp.float64), inputs["b"].astype(jnp.float64)
        h, state = jax.jit(functools.partial(linear_scan, impl=impl, return_state=True))(a, b)
        h_ref, _ = reference.linear_scan(a, b)
    assert h.dtype == state.dtype == jnp.float64
    np.testing.assert_allclose(h, h_ref, rtol=1e-12, atol=1e-12)


def test_linear_scan_unknown_impl_names_the_valid_ones():
    inputs = make_inputs(9)
    with pytest.raises(
        ValueError, match="'fast'; valid: auto, associative, chunked, pallas, reference$"
    ):
        linear_scan(inputs["a"], inputs["b"], impl="fast")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("b", jnp.zeros((4,)), r"b must be \(b, l, ...\)"),
        (
            "a",
            jnp.zeros((2, 37)),
            r"a must have b's shape \(2, 37, 3\) or the per-step shape \(3,\)",
        ),
        ("h0", jnp.zeros((2, 4)), r"h0 must have shape \(2, 3\)"),
        ("segment_ids", jnp.zeros((2, 36), jnp.int32), r"segment_ids must have shape \(2, 37\)"),
    ],
)
def test_linear_scan_bad_shape_raises_one_line_error(name, value, message):
    inputs = make_inputs(10)
    inputs[name] = value
    with pytest.raises(ValueError, match=message) as err:
        call(linear_scan, inputs)
    assert "\n" not in str(err.value)
