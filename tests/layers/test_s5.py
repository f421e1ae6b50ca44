"""S5 against a dense NumPy complex128 MIMO recurrence, its HiPPO-N / PTD init, and its options.

The contract (step == parallel, padding, state in and out, bf16, gradients) is checked by
tests/layers/test_conformance.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.hippo import hippo_legs, legs_diagonal, legs_normal_eig, nplr_legs
from ssm.layers import S5
from ssm.layers.s5 import s5_eigenbasis

H, LENGTH, BATCH = 3, 10, 2


def make(**options):
    options = {"d_state": 8, "blocks": 1, "dt_min": 0.05, "dt_max": 0.5, **options}
    return S5(H, **options, rngs=nnx.Rngs(0))


def inputs(length=LENGTH):
    return jax.random.normal(jax.random.key(1), (BATCH, length, H))


def as_complex(param):
    p = np.asarray(param[...], np.float64)
    return p[..., 0] + 1j * p[..., 1]


def dense_reference(layer, x):
    """y (b, l, h) and the final state (b, n) of the layer's SSM, stepped in complex128 with the
    dense matrices Ā = diag(Λ̄) (n, n), B̄ (n, h), C̃ (h, n) materialized from its parameters."""
    lam = as_complex(layer.Lambda)
    if layer.clip_eigs:
        lam = np.minimum(lam.real, -1e-4) + 1j * lam.imag
    B, C = as_complex(layer.B), as_complex(layer.C)
    D, dt = np.asarray(layer.D[...], np.float64), np.exp(np.asarray(layer.log_dt[...], np.float64))
    if layer.disc == "zoh":
        lam_bar = np.exp(lam * dt)
        B_bar = ((lam_bar - 1) / lam)[:, None] * B
    else:
        lam_bar = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        B_bar = (dt / (1 - dt * lam / 2))[:, None] * B
    A_bar = np.diag(lam_bar)
    scale = 2.0 if layer.conj_sym else 1.0
    u = np.asarray(x, np.float64)
    y = u * D
    directions = [(0, range(LENGTH))]
    if layer.bidirectional:
        directions.append((1, range(LENGTH - 1, -1, -1)))
    for c, times in directions:
        state = np.zeros((BATCH, len(lam)), np.complex128)
        for t in times:
            state = state @ A_bar.T + u[:, t] @ B_bar.T
            y[:, t] += scale * (state @ C[c].T).real
        if c == 0:
            final = state
    return y, final


# Every pair of conj_sym x disc x blocks values, an odd state size, PTD and the other C inits.
CASES = [
    dict(conj_sym=True, disc="zoh", blocks=1),
    dict(conj_sym=True, disc="bilinear", blocks=2),
    dict(conj_sym=False, disc="zoh", blocks=2),
    dict(conj_sym=False, disc="bilinear", blocks=1),
    dict(d_state=5, conj_sym=False),
    dict(init="ptd", conj_sym=False, blocks=2),
    dict(c_init="lecun_normal", disc="bilinear"),
    dict(c_init="complex_normal", conj_sym=False),
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_s5_parallel_output_and_state_equal_the_dense_mimo_recurrence(options):
    layer = make(**options)
    x = inputs()
    y, state = layer(x, return_state=True)
    y_ref, state_ref = dense_reference(layer, x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5 * np.abs(y_ref).max())
    np.testing.assert_allclose(state, state_ref, atol=1e-5 * np.abs(state_ref).max())
    assert state.shape == (BATCH, 4 if options.get("conj_sym", True) else options.get("d_state", 8))
    assert state.dtype == jnp.complex64


@pytest.mark.parametrize("conj_sym", [True, False])
def test_s5_bidirectional_adds_the_reversed_scan_read_out_by_a_second_C(conj_sym):
    layer = make(bidirectional=True, conj_sym=conj_sym, blocks=2)
    assert layer.C.shape[0] == 2 and not layer.recurrent
    x = inputs()
    y_ref, _ = dense_reference(layer, x)
    np.testing.assert_allclose(layer(x), y_ref, atol=1e-5 * np.abs(y_ref).max())


def test_s5_clip_eigs_keeps_the_real_parts_of_lambda_negative_in_use():
    layer = make(clip_eigs=True)
    layer.Lambda[...] = layer.Lambda[...].at[:2, 0].set(0.3)
    assert bool(jnp.all(layer.eigenvalues().real <= -1e-4))
    x = inputs()
    y_ref, _ = dense_reference(layer, x)
    np.testing.assert_allclose(layer(x), y_ref, atol=1e-5 * np.abs(y_ref).max())


@pytest.mark.parametrize("blocks", [1, 4])
def test_s5_init_lambda_is_hippo_n_per_block_with_negative_real_parts(blocks):
    layer = make(d_state=16, blocks=blocks)
    lam = as_complex(layer.Lambda)
    assert np.all(lam.real < 0)
    np.testing.assert_allclose(lam, np.tile(legs_diagonal(16 // blocks), blocks), rtol=1e-6)
    full = as_complex(make(d_state=16, blocks=blocks, conj_sym=False).Lambda)
    np.testing.assert_allclose(full, np.tile(legs_normal_eig(16 // blocks)[0], blocks), atol=1e-5)


@pytest.mark.parametrize("conj_sym", [True, False])
def test_s5_eigenbasis_rebuilds_the_block_diagonal_normal_legs_matrix(conj_sym):
    lam, V, V_inv = s5_eigenbasis("hippo_n", 12, 3, conj_sym, 0.0)
    assert V.shape == (12, 6 if conj_sym else 12) and V_inv.shape == V.T.shape
    rebuilt = V @ np.diag(lam) @ V_inv
    rebuilt = 2 * rebuilt.real if conj_sym else rebuilt  # the conjugate half is implicit
    S, _ = nplr_legs(4)
    np.testing.assert_allclose(rebuilt, np.kron(np.eye(3), S), atol=1e-12)
    np.testing.assert_allclose(V_inv @ V, np.eye(V.shape[1]), atol=1e-12)


def test_s5_ptd_eigenbasis_diagonalizes_the_perturbed_legs_blocks():
    lam, V, V_inv = s5_eigenbasis("ptd", 16, 2, False, 0.1)
    rebuilt = V @ np.diag(lam) @ V_inv
    A, _ = hippo_legs(8)
    E = rebuilt - np.kron(np.eye(2), A)
    np.testing.assert_allclose(np.linalg.norm(E[:8, :8], 2), 0.1, rtol=1e-6)
    np.testing.assert_allclose(E[:8, 8:], 0.0, atol=1e-12)
    assert np.abs(rebuilt.imag).max() < 1e-9


def test_s5_init_scales_follow_the_s5_code():
    """B̃ = V⁻¹ B with real lecun-normal B (var 1/p); C = C̃ V⁻¹ parts trunc_standard_normal
    (var 1/p per row) or lecun_normal (var 1/(p h)); complex_normal C̃ var 1/2 per part."""
    h, p = 32, 32
    options = dict(d_state=p, blocks=2, conj_sym=False, dt_min=1e-3, dt_max=1e-1)
    layer = S5(h, **options, rngs=nnx.Rngs(0))
    _, V, V_inv = s5_eigenbasis("hippo_n", p, 2, False, 0.0)
    B = V @ as_complex(layer.B)
    assert np.abs(B.imag).max() < 1e-5  # B̃ is V⁻¹ of a real matrix
    np.testing.assert_allclose(B.real.std(), 1 / np.sqrt(p), rtol=0.1)
    C = as_complex(layer.C)[0] @ V_inv
    np.testing.assert_allclose([C.real.std(), C.imag.std()], 1 / np.sqrt(p), rtol=0.1)
    lecun = S5(h, **options, c_init="lecun_normal", rngs=nnx.Rngs(0))
    C = as_complex(lecun.C)[0] @ V_inv
    np.testing.assert_allclose(C.real.std(), 1 / np.sqrt(p * h), rtol=0.1)
    normal = S5(h, **options, c_init="complex_normal", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(normal.C[...]).std(), np.sqrt(0.5), rtol=0.1)
    dt = np.exp(np.asarray(layer.log_dt[...]))
    assert dt.shape == (p,) and dt.min() >= 1e-3 and dt.max() <= 1e-1
    assert dt.max() / dt.min() > 10  # one timescale per state, spread log-uniformly


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(d_state=10, blocks=4), "d_state must be divisible by blocks"),
        (dict(d_state=12, blocks=4), "conj_sym needs an even block size"),
        (dict(d_state=5), "conj_sym needs an even block size"),
        (dict(d_state=0), "S5 d_state=0 is not valid; valid: an integer >= 1"),
        (dict(init="ptd"), "init 'ptd' needs conj_sym=False"),
        (
            dict(init="ptd", conj_sym=False, ptd_eps=0.0),
            "ptd_eps=0.0 is not valid; valid: a number > 0",
        ),
        (dict(init="legs"), "unknown S5 init 'legs'; valid: hippo_n, ptd"),
        (dict(c_init="normal"), "unknown S5 c_init 'normal'; valid: trunc_standard_normal"),
        (dict(disc="euler"), "unknown S5 disc 'euler'; valid: zoh, bilinear"),
        (dict(dt_min=0.5, dt_max=0.1), "S5 needs dt_min <= dt_max"),
    ],
)
def test_s5_rejects_bad_options_in_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        make(**options)
    assert "\n" not in str(error.value)
