"""Every selective_scan implementation equals the step-by-step reference: outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm.ops import reference, selective_scan
from ssm.ops.selective_scan import SELECTIVE_SCAN

# |actual - expected| <= tol * (|expected| + max |expected|), per input dtype; math is float32
# inside every implementation, so bf16 differs from the reference by output rounding only.
TOLERANCE = {
    "float32": {"out": 1e-5, "grad": 1e-4},
    "bfloat16": {"out": 1e-2, "grad": 2e-2},
}
FAST_IMPLS = ["associative", "chunked", "chunked_sequential"]
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
        reference.selective_scan, make_inputs(seed, dtype=dtype), dt_softplus=True, reverse=reverse
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
        for impl in FAST_IMPLS
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
)
def test_selective_scan_impl_matches_reference_any_shape_and_options(
    impl, length, chunk_size, groups, optional, dt_softplus, reverse
):
    inputs = make_inputs(length, b=1, length=length, groups=groups)
    inputs = {k: v for k, v in inputs.items() if k not in OPTIONAL or k in optional}
    if not dt_softplus:  # keep Δ = dt + dt_bias positive, as softplus would
        inputs["dt"] = jnp.abs(inputs["dt"]) * 0.1
        if "dt_bias" in inputs:
            inputs["dt_bias"] = jnp.abs(inputs["dt_bias"]) * 0.1
    kwargs = dict(dt_softplus=dt_softplus, reverse=reverse)
    extra = {"chunk_size": chunk_size} if impl.startswith("chunked") else {}
    y, h = run(SELECTIVE_SCAN.get(impl), inputs, **kwargs, **extra)
    y_ref, h_ref = run(reference.selective_scan, inputs, **kwargs)
    assert_close(y, y_ref, TOLERANCE["float32"]["out"], "y")
    assert_close(h, h_ref, TOLERANCE["float32"]["out"], "state")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("impl", ["reference", *FAST_IMPLS])
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


AUTO = "chunked_sequential" if jax.default_backend() == "cpu" else "chunked"


def test_selective_scan_auto_uses_a_chunked_scan_and_returns_y_only_by_default():
    inputs = make_inputs(3, length=20)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    y = jax.jit(functools.partial(selective_scan, dt_softplus=True))(*args)
    y_chunked = jax.jit(functools.partial(selective_scan, dt_softplus=True, impl=AUTO))(*args)
    assert y.shape == inputs["x"].shape
    assert_close(y, y_chunked, 0.0)


def test_selective_scan_failing_impl_warns_and_falls_back_to_reference(monkeypatch):
    def broken(*args, **kwargs):
        raise NotImplementedError("no kernel for this shape\nsecond line")

    monkeypatch.setitem(SELECTIVE_SCAN._entries, AUTO, broken)
    inputs = make_inputs(4, length=20)
    with pytest.warns(
        UserWarning,
        match=rf"'{AUTO}' failed \(NotImplementedError: no kernel for "
        r"this shape\); falling back to 'reference'$",
    ):
        y, h = run(functools.partial(selective_scan, dt_softplus=True), inputs)
    y_ref, h_ref = run(reference.selective_scan, inputs, dt_softplus=True)
    assert_close(y, y_ref, 0.0)
    assert_close(h, h_ref, 0.0)


def test_selective_scan_unknown_impl_names_the_valid_ones():
    inputs = make_inputs(5, length=4)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    with pytest.raises(
        ValueError,
        match="'fast'; valid: auto, associative, chunked, chunked_sequential, reference$",
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
    chunked = SELECTIVE_SCAN.get(impl)

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
