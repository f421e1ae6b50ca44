"""Every SSD implementation equals the step-by-step reference, which equals a NumPy loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm.ops.dispatch import DispatchError, Unsupported, strict
from ssm.ops.ssd import SSD, segment_sum, ssd, ssd_state_update

# |actual - expected| <= tol * (|expected| + max |expected|), per input dtype.
TOLERANCE = {
    "float32": {"out": 1e-4, "grad": 1e-3},
    "bfloat16": {"out": 1e-2, "grad": 2e-2},
}
IMPLS = [name for name in SSD.names() if name != "auto"]  # the live registry
FAST_IMPLS = [name for name in IMPLS if name != "reference"]
DIFFERENTIABLE = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0")


def make_inputs(seed, b=2, length=45, heads=4, p=3, groups=2, n=5, dtype="float32"):
    """Mamba-2-like inputs with packed segment ids; h0 float32 (the state dtype)."""
    rng = np.random.default_rng(seed)
    inputs = {
        "x": rng.standard_normal((b, length, heads, p)),
        "dt": rng.standard_normal((b, length, heads)) - 1.0,
        "A": -np.exp(rng.standard_normal(heads)),
        "B": rng.standard_normal((b, length, groups, n)),
        "C": rng.standard_normal((b, length, groups, n)),
        "D": rng.standard_normal((heads, p)),
        "z": rng.standard_normal((b, length, heads, p)),
        "dt_bias": 0.5 * rng.standard_normal(heads),
    }
    inputs = {k: jnp.asarray(v, dtype) for k, v in inputs.items()}
    inputs["h0"] = jnp.asarray(rng.standard_normal((b, heads, p, n)), jnp.float32)
    starts = rng.random((b, length)) < 0.1
    inputs["segment_ids"] = jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)
    return inputs


def numpy_ssd(x, dt, A, B, C, D, z, dt_bias, h0, segment_ids):
    """The SSD recurrence in float64, with softplus, restarts, D (h, p) and the silu gate."""
    x, dt, A, B, C, D, z, dt_bias, h0 = (
        np.asarray(jnp.asarray(v, jnp.float32), np.float64)
        for v in (x, dt, A, B, C, D, z, dt_bias, h0)
    )
    heads, groups = x.shape[2], B.shape[2]
    B, C = (np.repeat(v, heads // groups, axis=2) for v in (B, C))
    delta = np.log1p(np.exp(dt + dt_bias))  # (b, l, h)
    seg = np.asarray(segment_ids)
    h, ys = h0, []
    for t in range(x.shape[1]):
        if t and np.any(seg[:, t] != seg[:, t - 1]):
            h = np.where((seg[:, t] != seg[:, t - 1])[:, None, None, None], 0.0, h)
        decay = np.exp(delta[:, t] * A)[..., None, None]
        h = decay * h + np.einsum("bhp,bhn->bhpn", delta[:, t, :, None] * x[:, t], B[:, t])
        y = np.einsum("bhpn,bhn->bhp", h, C[:, t]) + D * x[:, t]
        ys.append(y * z[:, t] / (1 + np.exp(-z[:, t])))
    return np.stack(ys, axis=1), h


def call(fn, inputs, **kwargs):
    args = [inputs.get(k) for k in ("x", "dt", "A", "B", "C", "D", "z")]
    extra = {k: inputs.get(k) for k in ("dt_bias", "h0", "segment_ids")}
    return fn(*args, **extra, dt_softplus=True, return_state=True, **kwargs)


def run_with_grads(inputs, **kwargs):
    """(y, state) and the gradients of a fixed random projection of both wrt every input."""
    rng = np.random.default_rng(99)
    w_y = jnp.asarray(rng.standard_normal(inputs["x"].shape), jnp.float32)
    w_h = jnp.asarray(rng.standard_normal(inputs["h0"].shape), jnp.float32)
    values = {k: v for k, v in inputs.items() if k in DIFFERENTIABLE}

    def loss(values):
        y, h = call(ssd, {**inputs, **values}, **kwargs)
        return jnp.sum(y.astype(jnp.float32) * w_y) + jnp.sum(h * w_h), (y, h)

    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(values)
    return outputs, grads


def assert_close(actual, expected, tol, what=""):
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    expected = np.asarray(jnp.asarray(expected, jnp.float32))
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def test_ssd_reference_equals_a_float64_numpy_loop():
    inputs = make_inputs(0)
    y, h = jax.jit(functools.partial(call, ssd, impl="reference"))(inputs)
    y_np, h_np = numpy_ssd(**inputs)
    assert_close(y, y_np, 1e-5, "y")
    assert_close(h, h_np, 1e-5, "state")


CHUNK_OPTION = {"chunked": "chunk_size", "pallas": "time_block"}  # impls with chunks
# Each impl on chunk sizes {8, 16, 64} (length 45: ragged tails; 64: one short chunk),
# groups {1, h}, fp32 and bf16, with and without segments; h0 and return_state always.
COMBINATIONS = [
    dict(chunk_size=8, groups=1, dtype="float32", segments=True),
    dict(chunk_size=16, groups=4, dtype="bfloat16", segments=True),
    dict(chunk_size=64, groups=4, dtype="float32", segments=False),
    dict(chunk_size=8, groups=4, dtype="bfloat16", segments=False),
]
CASES = [
    pytest.param(impl, c, id="-".join([impl, *(f"{k}={v}" for k, v in c.items())]))
    for impl in FAST_IMPLS
    for c in COMBINATIONS
    if impl in CHUNK_OPTION or c["chunk_size"] == 8  # quadratic has no chunks
]


@functools.cache
def reference_with_grads(groups, dtype, segments):
    inputs = make_inputs(1, groups=groups, dtype=dtype)
    if not segments:
        inputs.pop("segment_ids")
    return inputs, run_with_grads(inputs, impl="reference")


@pytest.mark.parametrize("impl, combination", CASES)
def test_ssd_impl_matches_reference_outputs_and_grads(impl, combination):
    c = combination
    inputs, ((y_ref, h_ref), grads_ref) = reference_with_grads(
        c["groups"], c["dtype"], c["segments"]
    )
    options = {CHUNK_OPTION[impl]: c["chunk_size"]} if impl in CHUNK_OPTION else {}
    (y, h), grads = run_with_grads(inputs, impl=impl, **options)
    tol = TOLERANCE[c["dtype"]]
    assert y.dtype == jnp.dtype(c["dtype"]) and h.dtype == jnp.float32
    assert_close(y, y_ref, tol["out"], "y")
    assert_close(h, h_ref, tol["out"], "state")
    assert grads_ref.keys() == grads.keys()
    for name, expected in grads_ref.items():
        assert grads[name].dtype == inputs[name].dtype
        assert_close(grads[name], expected, tol["grad"], f"d loss / d {name}")


@settings(max_examples=5, deadline=None)
@given(
    impl=st.sampled_from(FAST_IMPLS),
    length=st.integers(1, 40),
    chunk_size=st.integers(1, 16),
    groups=st.sampled_from([1, 2, 4]),
    segments=st.booleans(),
)
def test_ssd_impl_matches_reference_any_length_and_chunk(
    impl, length, chunk_size, groups, segments
):
    inputs = make_inputs(length, b=1, length=length, groups=groups)
    if not segments:
        inputs.pop("segment_ids")
    options = {"chunk_size": chunk_size} if impl == "chunked" else {}
    y, h = jax.jit(functools.partial(call, ssd, impl=impl, **options))(inputs)
    y_ref, h_ref = jax.jit(functools.partial(call, ssd, impl="reference"))(inputs)
    assert_close(y, y_ref, TOLERANCE["float32"]["out"], "y")
    assert_close(h, h_ref, TOLERANCE["float32"]["out"], "state")


@pytest.mark.parametrize("impl", IMPLS)
def test_ssd_split_with_state_equals_whole_sequence(impl):
    inputs = make_inputs(2, length=40)
    inputs.pop("segment_ids")
    scan = jax.jit(functools.partial(call, ssd, impl=impl))
    y_whole, h_whole = scan(inputs)
    part = {k: v for k, v in inputs.items() if k != "h0"}
    y1, h_mid = scan({k: v[:, :20] if v.ndim >= 3 else v for k, v in inputs.items()})
    y2, h_last = scan(
        {**{k: v[:, 20:] if v.ndim >= 3 else v for k, v in part.items()}, "h0": h_mid}
    )
    assert_close(jnp.concatenate([y1, y2], axis=1), y_whole, 1e-4, "y")
    assert_close(h_last, h_whole, 1e-4, "state")


def test_ssd_segment_sum_is_exact_for_long_spans_of_strong_decay():
    # cumulative sums reach -1e4 here; a difference of them would lose the per-step values
    log_a = jnp.full((1, 256), -40.0)
    sums = segment_sum(log_a, None)
    i, j = np.tril_indices(256)
    np.testing.assert_array_equal(np.asarray(sums[0])[i, j], -40.0 * (i - j))
    assert bool(jnp.all(jnp.isneginf(sums[0][np.triu_indices(256, 1)])))


def test_ssd_auto_picks_quadratic_for_short_and_chunked_for_long():
    assert SSD.auto("cpu", jnp.zeros((1, 64, 2, 2))) == "quadratic"
    assert SSD.auto("gpu", jnp.zeros((1, 65, 2, 2))) == "chunked"


def test_ssd_unsupported_impl_falls_back_with_a_warning_only_outside_strict(monkeypatch):
    def unsupported(*args, **kwargs):
        raise Unsupported("no kernel here")

    monkeypatch.setitem(SSD._impls, "chunked", unsupported)
    inputs = make_inputs(3, length=10)
    with strict(False), pytest.warns(UserWarning, match="falling back to 'reference'"):
        call(ssd, inputs, impl="chunked")
    with pytest.raises(DispatchError):
        call(ssd, inputs, impl="chunked")


def test_ssd_rejects_a_bad_chunk_size_and_unknown_options():
    inputs = make_inputs(4, length=10)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        call(ssd, inputs, impl="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="impl 'quadratic' takes no option 'chunk_size'"):
        call(ssd, inputs, impl="quadratic", chunk_size=4)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("x", jnp.zeros((2, 6, 4)), r"x must be \(b, l, h, p\)"),
        ("B", jnp.zeros((2, 6, 3, 5)), r"B must be \(b, l, g, n\) with g dividing h=4"),
        ("dt", jnp.zeros((2, 6, 3)), r"dt must have shape \(2, 6, 4\)"),
        ("D", jnp.zeros((3,)), r"D must have shape \(4,\) or \(4, 3\)"),
        ("h0", jnp.zeros((2, 4, 3)), r"h0 must have shape \(2, 4, 3, 5\)"),
        ("segment_ids", jnp.zeros((2, 5), jnp.int32), r"segment_ids must have shape \(2, 6\)"),
    ],
)
def test_ssd_bad_shape_raises_one_line_error(name, value, message):
    inputs = make_inputs(5, length=6)
    inputs[name] = value
    with pytest.raises(ValueError, match=message) as err:
        call(ssd, inputs)
    assert "\n" not in str(err.value)


def test_ssd_state_update_steps_equal_the_scan():
    inputs = make_inputs(6, length=7)
    inputs.pop("segment_ids")
    y_scan, h_scan = call(ssd, inputs, impl="reference")
    step = jax.jit(functools.partial(ssd_state_update, dt_softplus=True))
    h, ys = inputs["h0"], []
    for t in range(7):
        y_t, h = step(
            h,
            *(inputs[k][:, t] for k in ("x", "dt")),
            inputs["A"],
            *(inputs[k][:, t] for k in ("B", "C")),
            inputs["D"],
            inputs["z"][:, t],
            dt_bias=inputs["dt_bias"],
        )
        ys.append(y_t)
    assert y_t.dtype == jnp.float32 and h.dtype == jnp.float32
    assert_close(jnp.stack(ys, axis=1), y_scan, 1e-5, "y")
    assert_close(h, h_scan, 1e-5, "state")


@pytest.mark.parametrize("groups, per_head_D", [(1, True), (2, False)])
def test_ssd_state_update_one_step_equals_numpy(groups, per_head_D):
    rng = np.random.default_rng(7)
    b, heads, p, n = 2, 4, 3, 5
    h0, x, z = (rng.standard_normal(s) for s in [(b, heads, p, n), (b, heads, p), (b, heads, p)])
    dt, B, C = (rng.standard_normal(s) for s in [(b, heads), (b, groups, n), (b, groups, n)])
    A, dt_bias = -np.exp(rng.standard_normal(heads)), rng.standard_normal(heads)
    D = rng.standard_normal(heads if per_head_D else (heads, p))
    args = [jnp.asarray(a, jnp.float32) for a in (h0, x, dt, A, B, C, D, z)]
    y, h = ssd_state_update(*args, dt_bias=jnp.asarray(dt_bias, jnp.float32), dt_softplus=True)
    delta = np.log1p(np.exp(dt + dt_bias))  # (b, h)
    Bh, Ch = (np.repeat(a, heads // groups, axis=1) for a in (B, C))  # (b, h, n)
    h_np = np.exp(delta * A)[..., None, None] * h0 + np.einsum("bh,bhp,bhn->bhpn", delta, x, Bh)
    skip = D[:, None] if per_head_D else D
    y_np = (np.einsum("bhpn,bhn->bhp", h_np, Ch) + skip * x) * z / (1 + np.exp(-z))
    assert y.shape == (b, heads, p) and h.shape == (b, heads, p, n)
    assert_close(y, y_np, 1e-5, "y")
    assert_close(h, h_np, 1e-5, "state")


def test_ssd_state_update_bad_shape_raises_one_line_error():
    h, x = jnp.zeros((2, 4, 3, 5)), jnp.zeros((2, 4, 3))
    B = jnp.zeros((2, 1, 5))
    with pytest.raises(ValueError, match=r"dt must have shape") as err:
        ssd_state_update(h, x, jnp.zeros((2, 3)), -jnp.ones(4), B, B)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 4, 3, 5\)"):
        ssd_state_update(h[..., :4], x, jnp.zeros((2, 4)), -jnp.ones(4), B, B)
