"""Every selective_scan implementation equals the step-by-step reference: outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm.ops import reference, selective_scan
from ssm.ops.dispatch import DispatchError, Unsupported, strict
from ssm.ops.selective_scan import SELECTIVE_SCAN, selective_state_update

# |actual - expected| <= tol * (|expected| + max |expected|), per input dtype; math is float32
# inside every implementation, so bf16 differs from the reference by output rounding only.
TOLERANCE = {
    "float32": {"out": 1e-5, "grad": 1e-4},
    "bfloat16": {"out": 1e-2, "grad": 2e-2},
}
IMPLS = [name for name in SELECTIVE_SCAN.names() if name != "auto"]  # the live registry
FAST_IMPLS = [name for name in IMPLS if name != "reference"]
# Inputs of the public signature that may be None.
OPTIONAL = ("D", "z", "dt_bias", "h0")


def make_inputs(seed, b=2, length=100, d=8, n=4, groups=2, dtype="float32"):
    """Random well-conditioned inputs: B, C grouped as (b, l, g, n), or (b, l, n) if groups=0."""
    rng = np.random.default_rng(seed)
    bc_shape = (b, length, groups, n) if groups else (b, length, n)
    inputs = {
        "x": rng.standard_normal((b, length, d)),
        "dt": rng.standard_normal((b, length, d)) - 1.0,
        "A": -np.exp(rng.standard_normal((d, n))),
        "B": rng.standard_normal(bc_shape),
        "C": rng.standard_normal(bc_shape),
        "D": rng.standard_normal(d),
        "z": rng.standard_normal((b, length, d)),
        "dt_bias": 0.5 * rng.standard_normal(d),
    }
    inputs = {k: jnp.asarray(v, dtype) for k, v in inputs.items()}
    inputs["h0"] = jnp.asarray(rng.standard_normal((b, d, n)), jnp.float32)  # state is float32
    return inputs


def call(fn, inputs, **kwargs):
    """fn(x, dt, A, B, C, D, z, dt_bias=, h0=, return_state=True, **kwargs) -> (y, state)."""
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    extra = {k: inputs.get(k) for k in ("dt_bias", "h0")}
    return fn(*args, inputs.get("D"), inputs.get("z"), **extra, return_state=True, **kwargs)


def reference_scan(*args, return_state, **kwargs):
    """``reference.selective_scan`` (always (y, state)) in the public signature."""
    return reference.selective_scan(*args, **kwargs)


def run(fn, inputs, **kwargs):
    """Jitted ``call``: (y, state)."""
    return jax.jit(functools.partial(call, fn, **kwargs))(inputs)


def run_with_grads(fn, inputs, **kwargs):
    """(y, state) and the gradients of a fixed random projection of both wrt every input."""
    rng = np.random.default_rng(99)
    w_y = rng.standard_normal(inputs["x"].shape, np.float32)
    w_h = rng.standard_normal(inputs["h0"].shape, np.float32)

    def loss(inputs):
        y, h = call(fn, inputs, **kwargs)
        return jnp.sum(y.astype(jnp.float32) * w_y) + jnp.sum(h * w_h), (y, h)

    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(inputs)
    return outputs, grads


@functools.cache
def reference_with_grads(seed, dtype, reverse):
    return run_with_grads(
        reference_scan, make_inputs(seed, dtype=dtype), dt_softplus=True, reverse=reverse
    )


def assert_close(actual, expected, tol, what=""):
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    expected = np.asarray(jnp.asarray(expected, jnp.float32))
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.fixture(
    scope="module",
    params=[
        (impl, dtype, reverse)
        for impl in IMPLS
        for dtype in ("float32", "bfloat16")
        for reverse in (False, True)
    ],
    ids=lambda p: "-".join([p[0], p[1], "reverse" if p[2] else "forward"]),
)
def impl_and_reference(request):
    """Outputs and grads of one implementation and of the reference on the same inputs."""
    # length 100 = a chunk of 64 and a ragged tail; grouped B, C; h0, D, z, dt_bias, softplus.
    impl, dtype, reverse = request.param
    inputs = make_inputs(0, dtype=dtype)
    fast = run_with_grads(
        functools.partial(selective_scan, impl=impl), inputs, dt_softplus=True, reverse=reverse
    )
    return inputs, dtype, fast, reference_with_grads(0, dtype, reverse)


def test_selective_scan_impl_matches_reference(impl_and_reference):
    inputs, dtype, ((y, h), _), ((y_ref, h_ref), _) = impl_and_reference
    assert y.dtype == jnp.dtype(dtype) and y.shape == inputs["x"].shape
    assert h.dtype == jnp.float32 and h.shape == inputs["h0"].shape
    assert_close(y, y_ref, TOLERANCE[dtype]["out"], "y")
    assert_close(h, h_ref, TOLERANCE[dtype]["out"], "state")


def test_selective_scan_impl_matches_reference_grad(impl_and_reference):
    inputs, dtype, (_, grads), (_, grads_ref) = impl_and_reference
    assert grads_ref.keys() == inputs.keys()
    for name, expected in grads_ref.items():
        assert grads[name].dtype == inputs[name].dtype
        assert_close(grads[name], expected, TOLERANCE[dtype]["grad"], f"d loss / d {name}")


@settings(max_examples=6, deadline=None)
@given(
    impl=st.sampled_from(FAST_IMPLS),
    length=st.integers(1, 30),
    chunk_size=st.integers(1, 8),
    groups=st.sampled_from([0, 1, 2, 4]),
    optional=st.sets(st.sampled_from(OPTIONAL)),
    dt_softplus=st.booleans(),
    reverse=st.booleans(),
    segments=st.booleans(),
)
def test_selective_scan_impl_matches_reference_any_shape_and_options(
    impl, length, chunk_size, groups, optional, dt_softplus, reverse, segments
):
    inputs = make_inputs(length, b=1, length=length, groups=groups)
    inputs = {k: v for k, v in inputs.items() if k not in OPTIONAL or k in optional}
    if not dt_softplus:  # keep Δ = dt + dt_bias positive, as softplus would
        inputs["dt"] = jnp.abs(inputs["dt"]) * 0.1
        if "dt_bias" in inputs:
            inputs["dt_bias"] = jnp.abs(inputs["dt_bias"]) * 0.1
    kwargs = dict(dt_softplus=dt_softplus, reverse=reverse)
    if segments:
        starts = np.random.default_rng(length).random((1, length)) < 0.2
        kwargs["segment_ids"] = jnp.asarray(np.cumsum(starts, axis=1))
    extra = {"chunk_size": chunk_size} if impl.startswith("chunked") else {}
    y, h = run(functools.partial(selective_scan, impl=impl), inputs, **kwargs, **extra)
    y_ref, h_ref = run(reference_scan, inputs, **kwargs)
    assert_close(y, y_ref, TOLERANCE["float32"]["out"], "y")
    assert_close(h, h_ref, TOLERANCE["float32"]["out"], "state")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("impl", IMPLS)
def test_selective_scan_segments_equal_each_segment_run_alone_from_zero(impl, reverse):
    inputs = make_inputs(11, b=1, length=30)
    inputs.pop("h0")
    bounds = [(0, 7), (7, 22), (22, 30)]
    segment_ids = jnp.asarray([[i for i, (a, b) in enumerate(bounds) for _ in range(b - a)]])
    chunks = {"chunk_size": 8} if impl.startswith("chunked") else {}  # several chunks
    scan = functools.partial(selective_scan, impl=impl, dt_softplus=True, reverse=reverse, **chunks)
    y, h = run(scan, inputs, segment_ids=segment_ids)
    for start, stop in bounds:
        alone = {k: v[:, start:stop] if v.ndim >= 3 else v for k, v in inputs.items()}
        y_alone, h_alone = run(scan, alone)
        assert_close(y[:, start:stop], y_alone, TOLERANCE["float32"]["out"], f"{start}:{stop}")
        if (start, stop) == (bounds[0] if reverse else bounds[-1]):  # where the scan ends
            assert_close(h, h_alone, TOLERANCE["float32"]["out"], "final state")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("impl", IMPLS)
def test_selective_scan_split_with_state_equals_whole_sequence(impl, reverse):
    inputs = make_inputs(2)
    k = 50  # both halves have the same shape: one compile
    first, second = (slice(None, k), slice(k, None)) if not reverse else (slice(k, None), slice(k))
    scan = functools.partial(selective_scan, impl=impl, dt_softplus=True, reverse=reverse)

    def part(inputs, where, h0):
        sliced = {n: v[:, where] if v.ndim >= 3 and n != "h0" else v for n, v in inputs.items()}
        return run(scan, {**sliced, "h0": h0})

    y_whole, h_whole = run(scan, inputs)
    y_first, h_mid = part(inputs, first, inputs["h0"])
    y_second, h_last = part(inputs, second, h_mid)
    y_split = jnp.concatenate([y_first, y_second] if not reverse else [y_second, y_first], axis=1)
    assert_close(y_split, y_whole, TOLERANCE["float32"]["out"], "y")
    assert_close(h_last, h_whole, TOLERANCE["float32"]["out"], "state")


def test_selective_scan_auto_picks_by_platform_and_length_and_runs_that_impl():
    short, long = jnp.zeros((1, 128, 4)), jnp.zeros((1, 129, 4))
    assert SELECTIVE_SCAN.auto("cpu", short) == "reference"
    assert SELECTIVE_SCAN.auto("cpu", long) == "chunked_sequential"
    assert SELECTIVE_SCAN.auto("gpu", short) == SELECTIVE_SCAN.auto("tpu", long) == "chunked"
    inputs = make_inputs(3, length=20)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    y = jax.jit(functools.partial(selective_scan, dt_softplus=True))(*args)
    chosen = SELECTIVE_SCAN.auto(jax.default_backend(), inputs["x"])
    y_chosen = jax.jit(functools.partial(selective_scan, dt_softplus=True, impl=chosen))(*args)
    assert y.shape == inputs["x"].shape
    assert_close(y, y_chosen, 0.0)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_selective_scan_broken_impl_raises_instead_of_falling_back(monkeypatch, impl):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel bug")

    monkeypatch.setitem(SELECTIVE_SCAN._impls, impl, broken)
    with strict(False), pytest.raises(RuntimeError, match="kernel bug"):
        run(functools.partial(selective_scan, impl=impl), make_inputs(4, length=20))


def test_selective_scan_unsupported_impl_warns_once_and_returns_the_reference(monkeypatch):
    def unsupported(*args, **kwargs):
        raise Unsupported("no kernel for this shape\nsecond line")

    monkeypatch.setitem(SELECTIVE_SCAN._impls, "chunked", unsupported)
    inputs = make_inputs(4, length=20)
    scan = functools.partial(selective_scan, impl="chunked", dt_softplus=True)
    with strict(False), pytest.warns(UserWarning) as warned:
        y, h = run(scan, inputs)
    assert [str(w.message) for w in warned] == [
        "selective_scan impl 'chunked' cannot serve this call (Unsupported: no kernel for this "
        "shape); falling back to 'reference'"
    ]
    y_ref, h_ref = run(reference_scan, inputs, dt_softplus=True)
    assert_close(y, y_ref, 0.0)
    assert_close(h, h_ref, 0.0)
    with pytest.raises(DispatchError, match="strict dispatch allows no fallback"):
        run(scan, inputs)  # the suite runs strict


def test_selective_scan_passes_chunk_size_through_and_rejects_unknown_options():
    inputs = make_inputs(7, length=20)
    scan = functools.partial(selective_scan, impl="chunked", chunk_size=3, dt_softplus=True)
    y, h = run(scan, inputs)
    y_ref, h_ref = run(reference_scan, inputs, dt_softplus=True)
    assert_close(y, y_ref, TOLERANCE["float32"]["out"], "y")
    assert_close(h, h_ref, TOLERANCE["float32"]["out"], "state")
    with pytest.raises(ValueError, match="impl 'associative' takes no option 'chunk_size'"):
        run(functools.partial(selective_scan, impl="associative", chunk_size=3), inputs)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        run(functools.partial(selective_scan, impl="chunked", chunk_size=0), inputs)


@pytest.mark.parametrize("impl", IMPLS)
def test_selective_scan_computes_float64_inputs_in_float64(impl):
    with jax.enable_x64(True):
        inputs = {k: v.astype(jnp.float64) for k, v in make_inputs(8, length=30).items()}
        y, h = run(functools.partial(selective_scan, impl=impl), inputs, dt_softplus=True)
        y_ref, h_ref = run(reference_scan, inputs, dt_softplus=True)
    assert y.dtype == h.dtype == jnp.float64
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, h_ref, rtol=1e-12, atol=1e-12)


def test_selective_state_update_is_one_step_of_the_recurrence_in_float64_numpy():
    rng = np.random.default_rng(9)
    b, d, n, g = 2, 8, 4, 2
    h, A = rng.standard_normal((b, d, n)), -np.exp(rng.standard_normal((d, n)))
    x, dt, z = (rng.standard_normal((b, d)) for _ in range(3))
    B, C = (rng.standard_normal((b, g, n)) for _ in range(2))
    D, dt_bias = rng.standard_normal(d), rng.standard_normal(d)
    delta = np.log1p(np.exp(dt + dt_bias))
    B_d, C_d = np.repeat(B, d // g, axis=1), np.repeat(C, d // g, axis=1)
    h_new = np.exp(delta[..., None] * A) * h + (delta * x)[..., None] * B_d
    y = (np.sum(C_d * h_new, -1) + D * x) * z / (1 + np.exp(-z))
    args = [jnp.asarray(a, jnp.float32) for a in (h, x, dt, A, B, C, D, z)]
    update = jax.jit(functools.partial(selective_state_update, dt_softplus=True))
    y_op, h_op = update(*args, dt_bias=jnp.asarray(dt_bias, jnp.float32))
    np.testing.assert_allclose(h_op, h_new, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_op, y, rtol=1e-5, atol=1e-5)


def test_selective_state_update_steps_equal_the_scan():
    inputs = make_inputs(10, length=6)
    y_ref, h_ref = run(reference_scan, inputs, dt_softplus=True)
    h, ys = inputs["h0"], []
    for t in range(6):
        step = [inputs[k][:, t] for k in ("x", "dt")] + [inputs["A"]]
        step += [inputs[k][:, t] for k in ("B", "C")] + [inputs["D"], inputs["z"][:, t]]
        y_t, h = selective_state_update(h, *step, dt_bias=inputs["dt_bias"], dt_softplus=True)
        ys.append(y_t)
    assert_close(jnp.stack(ys, 1), y_ref, TOLERANCE["float32"]["out"], "y")
    assert_close(h, h_ref, TOLERANCE["float32"]["out"], "state")


def test_selective_scan_unknown_impl_names_the_valid_ones():
    inputs = make_inputs(5, length=4)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    with pytest.raises(
        ValueError,
        match="'fast'; valid: auto, associative, chunked, chunked_sequential, pallas, reference$",
    ):
        selective_scan(*args, impl="fast")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("x", jnp.zeros((2, 6)), r"x must be \(b, l, d\)"),
        ("dt", jnp.zeros((2, 6, 4)), r"dt must have shape \(2, 6, 8\)"),
        ("A", jnp.zeros((4, 3)), r"A must be \(d, n\) = \(8, n\)"),
        ("B", jnp.zeros((2, 5, 3)), r"B must be \(b, l, n\) = \(2, 6, 3\) or \(b, l, g, n\)"),
        ("B", jnp.zeros((2, 6, 3, 3)), "groups g=3 must divide d=8"),
        ("C", jnp.zeros((2, 6, 2, 3)), r"C must have B's shape \(2, 6, 3\)"),
        ("D", jnp.zeros((2, 8)), r"D must have shape \(8,\)"),
        ("z", jnp.zeros((2, 6, 1)), r"z must have shape \(2, 6, 8\)"),
        ("dt_bias", jnp.zeros((1,)), r"dt_bias must have shape \(8,\)"),
        ("h0", jnp.zeros((2, 8)), r"h0 must have shape \(2, 8, 3\)"),
    ],
)
def test_selective_scan_bad_shape_raises_one_line_error(name, value, message):
    inputs = make_inputs(6, length=6, n=3, groups=0)
    inputs[name] = value
    with pytest.raises(ValueError, match=message) as err:
        run(selective_scan, inputs)
    assert "\n" not in str(err.value)


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("impl", ["chunked", "chunked_sequential"])
def test_selective_scan_chunked_memory_does_not_grow_with_state_per_step(impl):
    # Per extra time step the chunked scan may hold O(d + n) numbers, not a (d, n) state.
    b, d, n = 1, 16, 64
    chunked = functools.partial(selective_scan, impl=impl)

    def grad(*args):
        return jax.grad(lambda *a: chunked(*a).sum(), argnums=(0, 1, 2, 3, 4))(*args)

    temps = {}
    for length in (1024, 4096):
        shapes = [(b, length, d), (b, length, d), (d, n), (b, length, n), (b, length, n)]
        args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
        temps[length] = (_temp_bytes(chunked, *args), _temp_bytes(grad, *args))
    state_bytes_per_step = b * d * n * 4
    for i, what in enumerate(["forward", "forward+backward"]):
        per_step = (temps[4096][i] - temps[1024][i]) / (4096 - 1024)
        assert per_step < 0.25 * state_bytes_per_step, (what, per_step, state_bytes_per_step)
