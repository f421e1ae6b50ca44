import numpy as np
import pytest
import scipy.linalg

from ssm.hippo import (
    MEASURES,
    hippo_legs,
    legs_diagonal,
    legs_normal_eig,
    nplr,
    nplr_legs,
    perturb_then_diagonalize,
    ptd_diagonal,
    rank_correction,
    transfer_function,
    transition,
    with_conjugates,
)
from ssm.init import S4D_INITS, s4d_diagonal, s4d_init


def closed_form(measure, n):
    """(A, B) written entry by entry from the papers' formulas (S4 code's scalings)."""
    A, B = np.zeros((n, n)), np.zeros(n)
    for i in range(n):
        if measure == "legs":  # HiPPO-LegS
            B[i] = np.sqrt(2 * i + 1)
        elif measure == "legt":  # HiPPO-LegT, window 1, halved
            B[i] = np.sqrt(2 * i + 1) / 2
        elif measure == "lagt":
            B[i] = 1.0
        else:  # FouT: constant, then (cos k, sin k) at (2k, 2k+1); state 1 (sin 0) unused
            B[i] = 1.0 if i == 0 else (np.sqrt(2) if i % 2 == 0 else 0.0)
    for i in range(n):
        for j in range(n):
            if measure == "legs":
                A[i, j] = -np.sqrt((2 * i + 1) * (2 * j + 1)) if i > j else -(i + 1) * (i == j)
            elif measure == "legt":
                sign = 1.0 if j <= i else (-1.0) ** (i - j)
                A[i, j] = -0.5 * sign * np.sqrt((2 * i + 1) * (2 * j + 1))
            elif measure == "lagt":
                A[i, j] = -1.0 if j < i else (-0.5 if i == j else 0.0)
            else:
                A[i, j] = -B[i] * B[j]
                if i % 2 == 0 and j == i + 1:
                    A[i, j] -= np.pi * (i // 2)
                if i % 2 == 1 and j == i - 1:
                    A[i, j] += np.pi * (i // 2)
    return A, B


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", [1, 6, 9])
def test_transition_matches_its_closed_form(measure, n):
    A, B = transition(measure, n)
    A_ref, B_ref = closed_form(measure, n)
    assert A.shape == (n, n) and B.shape == (n,)
    np.testing.assert_allclose(A, A_ref, atol=1e-12)
    np.testing.assert_allclose(B, B_ref, atol=1e-12)


def test_transition_legs_is_hippo_legs_and_unknown_measures_are_named():
    np.testing.assert_array_equal(transition("legs", 5)[0], hippo_legs(5)[0])
    A, B = hippo_legs(4)
    assert A[2, 1] == -np.sqrt(5) * np.sqrt(3)
    assert A[3, 3] == -4 and A[1, 2] == 0
    np.testing.assert_allclose(B, np.sqrt([1, 3, 5, 7]))
    valid = "valid: legs, legt, lagt, fout"
    for call in (transition, rank_correction, nplr):
        with pytest.raises(ValueError, match=f"^unknown HiPPO measure 'fourier'; {valid}$"):
            call("fourier", 8)


@pytest.mark.parametrize("measure", MEASURES)
def test_rank_correction_makes_A_a_shifted_skew_symmetric_hence_normal_matrix(measure):
    A, _ = transition(measure, 12)
    P = rank_correction(measure, 12)
    assert P.shape == ((2 if measure == "legt" else 1), 12)
    S = A + P.T @ P
    shift = -0.5 if measure == "legs" else 0.0
    np.testing.assert_allclose(S + S.T, 2 * shift * np.eye(12), atol=1e-12)
    np.testing.assert_allclose(S @ S.T, S.T @ S, atol=1e-9)
    padded = rank_correction(measure, 12, rank=3)
    assert padded.shape == (3, 12)
    np.testing.assert_array_equal(padded[: len(P)], P)
    assert not padded[len(P) :].any()
    with pytest.raises(ValueError, match="^rank must be >= 1, got 0$"):
        rank_correction(measure, 12, rank=0)


def test_legs_normal_part_is_normal_and_low_rank_correction_recovers_A():
    S, P = nplr_legs(16)
    np.testing.assert_allclose(S @ S.T, S.T @ S, atol=1e-9)
    np.testing.assert_allclose(S - np.outer(P, P), hippo_legs(16)[0], atol=1e-12)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", [8, 64])
def test_nplr_reconstructs_A_and_B_from_the_kept_conjugate_half(measure, n):
    A, B = transition(measure, n)
    Lambda, P, B_eig, V = nplr(measure, n)
    n2, r = n // 2, (2 if measure == "legt" else 1)
    assert Lambda.shape == (n2,) and P.shape == (r, n2) and B_eig.shape == (n2,)
    assert V.shape == (n, n)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(n), atol=1e-12)
    np.testing.assert_array_equal(V[:, n2:], V[:, :n2].conj())
    Lf, Pf, Bf = with_conjugates(Lambda), with_conjugates(P), with_conjugates(B_eig)
    rebuilt = V @ (np.diag(Lf) - Pf.T @ Pf.conj()) @ V.conj().T
    assert np.linalg.norm(rebuilt - A) < 1e-10 * np.linalg.norm(A)
    np.testing.assert_allclose(V @ Bf, B, atol=1e-10 * np.linalg.norm(B))
    np.testing.assert_allclose(V @ Pf.T, rank_correction(measure, n).T, atol=1e-10 * n)
    S = A + rank_correction(measure, n).T @ rank_correction(measure, n)
    np.testing.assert_allclose(S @ V, V * Lf, atol=1e-10 * np.linalg.norm(S))
    np.testing.assert_allclose(Lambda.real, -0.5 if measure == "legs" else 0.0, atol=1e-12)
    assert np.all(np.diff(Lambda.imag) > 0) and Lambda.imag[0] >= 0


def test_nplr_special_cases_legs_diagonal_fout_frequencies_rank_and_odd_sizes():
    np.testing.assert_array_equal(nplr("legs", 16)[0], legs_diagonal(16))
    # S4D paper: FouT's diagonal is iπk, the frequencies of S4D-Lin (which adds a real part -1/2)
    np.testing.assert_allclose(nplr("fout", 16)[0], 1j * np.pi * np.arange(8), atol=1e-12)
    np.testing.assert_allclose(s4d_diagonal("lin", 16).imag, nplr("fout", 16)[0].imag, atol=1e-12)
    assert nplr("legt", 8, rank=1)[1].shape == (2, 4)  # raised to LegT's own rank
    assert nplr("legs", 8, rank=2)[1].shape == (2, 4)
    assert not nplr("legs", 8, rank=2)[1][1].any()
    with pytest.raises(ValueError, match="^nplr needs an even state size n >= 2, got 7$"):
        nplr("legs", 7)


def test_s4d_legs_B_is_the_clipped_hippo_B_in_the_eigenbasis():
    Lambda, B = s4d_init("legs", 64)
    exact = nplr("legs", 64)[2]
    np.testing.assert_array_equal(Lambda, legs_diagonal(64))
    np.testing.assert_allclose(np.sum(np.abs(exact) ** 2), 64**2 / 2)  # |B|² = n², half per half
    np.testing.assert_array_equal(B.real, exact.real)
    np.testing.assert_allclose(B.imag, np.clip(exact.imag, -2, 2))
    assert 0.5 < np.abs(B).min() < 0.7 and 2.0 <= np.abs(B).max() < 2.02
    assert np.abs(exact).max() > 30  # without the clip, high-frequency modes get |B| ~ n


@pytest.mark.parametrize("init", S4D_INITS)
def test_s4d_init_A_is_s4d_diagonal_and_B_is_the_measures_or_one(init):
    A, B = s4d_init(init, 16)
    assert A.shape == B.shape == (8,)
    np.testing.assert_array_equal(A, s4d_diagonal(init, 16))
    assert np.all(A.real < 0)
    if init in MEASURES:  # the normal part's diagonal and S4's clipped B, Re Λ kept below 0
        Lambda, _, B_clipped, _ = nplr(init, 16, b_clip=2.0)
        np.testing.assert_array_equal(A.imag, Lambda.imag)
        np.testing.assert_array_equal(A.real, np.minimum(Lambda.real, -1e-4))
        np.testing.assert_array_equal(B, B_clipped)
    else:
        np.testing.assert_array_equal(B, np.ones(8))
    with pytest.raises(ValueError, match="^unknown S4D init 'hippo'; valid: legs, legt, lagt, fo"):
        s4d_init("hippo", 16)


def zoh_kernel_dense(A, B, C, dt, length):
    """K_l = C Ā^l B̄ of a dense real SSM, ZOH: Ā = exp(ΔA), B̄ = A⁻¹(Ā − I)B; float64."""
    dA = scipy.linalg.expm(dt * A)
    x, kernel = np.linalg.solve(A, (dA - np.eye(len(A))) @ B), []
    for _ in range(length):
        kernel.append(C @ x)
        x = dA @ x
    return np.array(kernel)


@pytest.mark.parametrize("n, eps, seed", [(16, 0.1, 0), (16, 0.01, 0), (64, 0.1, 0), (64, 0.1, 5)])
def test_ptd_diagonal_half_storage_has_the_kernel_of_perturbed_legs(n, eps, seed):
    A, B = hippo_legs(n)
    E = np.random.default_rng(seed).standard_normal((n, n))
    E *= eps / np.linalg.norm(E, 2)
    Lambda, B_eig, W = ptd_diagonal(n, eps, seed)
    real = np.linalg.eigvals(A + E).imag == 0
    assert len(Lambda) == n // 2 + real.sum() // 2  # pairs once, real eigenvalues each
    assert np.all(Lambda.real < 0) and np.all(Lambda[: n // 2 - real.sum() // 2].imag > 0)
    C, dt, length = np.random.default_rng(1).standard_normal(n), 0.01, 300
    dA = np.exp(dt * Lambda)
    diagonal = 2 * (np.power.outer(dA, np.arange(length)).T @ ((C @ W) * (dA - 1) / Lambda * B_eig))
    dense = zoh_kernel_dense(A + E, B, C, dt, length)
    np.testing.assert_allclose(diagonal.real, dense, atol=1e-8 * np.abs(dense).max())


def test_legs_diagonal_is_the_spectrum_of_the_normal_part():
    S, _ = nplr_legs(16)
    eig = np.linalg.eigvals(S)
    diag = legs_diagonal(16)
    assert diag.shape == (8,)
    np.testing.assert_allclose(diag.real, -0.5)
    assert np.all(diag.imag > 0)
    upper = np.sort(eig[eig.imag > 0].imag)
    np.testing.assert_allclose(np.sort(diag.imag), upper, rtol=1e-8)


@pytest.mark.parametrize("n", [7, 16])
def test_legs_normal_eig_diagonalizes_the_normal_part_with_a_unitary_V(n):
    S, _ = nplr_legs(n)
    lam, V = legs_normal_eig(n)
    assert lam.shape == (n,) and V.shape == (n, n)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(V @ np.diag(lam) @ np.linalg.inv(V), S, atol=1e-10)
    np.testing.assert_allclose(S @ V, V * lam, atol=1e-10)  # column k: S v = λ_k v
    np.testing.assert_allclose(lam.real, -0.5)
    assert np.all(np.diff(lam.imag) > 0)
    np.testing.assert_allclose(lam[n - n // 2 :], legs_diagonal(n))


def dense_bilinear_kernel(A, B, C, dt, length):
    """K_l = C Ā^l B̄, bilinear Ā, B̄ of a dense (A, B), by repeated multiplication (complex128)."""
    eye = np.eye(len(B))
    dA = np.linalg.solve(eye - dt / 2 * A, eye + dt / 2 * A)
    x = np.linalg.solve(eye - dt / 2 * A, dt * B)
    K = np.empty(length, np.complex128)
    for step in range(length):  # einsum: no BLAS threads, fast on a busy machine
        K[step], x = C @ x, np.einsum("ij,j->i", dA, x)
    return K


def diagonal_bilinear_kernel(Lambda, B, C, dt, length):
    """K_l = 2 Re Σ_k C_k Ā_k^l B̄_k of a diagonal SSM stored as one half of conjugate pairs."""
    dA = (1 + dt / 2 * Lambda) / (1 - dt / 2 * Lambda)
    dB = dt * B / (1 - dt / 2 * Lambda)
    return 2 * np.sum(C * dB * dA ** np.arange(length)[:, None], axis=-1).real


def s4d_vs_s4_kernel_distance(n, dt, length=2048, scale=0.5):
    """Relative L2 distance of the S4D-LegS kernel (Λ, scale·B of ``s4d_init``, C V) to the S4-LegS
    kernel (dense A = V (Λ − P Pᴴ) Vᴴ of ``nplr``, B = V B, C); C is a fixed random readout of
    the first 4 LegS coefficients, the same for every n (the S4D paper's basis kernels)."""
    Lambda, P, B, V = nplr("legs", n)
    Lf, Pf = with_conjugates(Lambda), with_conjugates(P)
    A = V @ (np.diag(Lf) - Pf.T @ Pf.conj()) @ V.conj().T
    C = np.zeros(n)
    C[:4] = np.random.default_rng(0).standard_normal(4)
    K = dense_bilinear_kernel(A, V @ with_conjugates(B), C, dt, length)
    assert np.abs(K.imag).max() < 1e-9 * np.abs(K).max()  # a real system, mapped consistently
    B_s4d = scale * s4d_init("legs", n)[1]
    K_diagonal = diagonal_bilinear_kernel(Lambda, B_s4d, C @ V[:, : n // 2], dt, length)
    return np.linalg.norm(K_diagonal - K.real) / np.linalg.norm(K.real)


@pytest.mark.parametrize("dt", [1e-3, 1e-2, 1e-1])
def test_s4d_legs_kernel_approaches_the_s4_legs_kernel_as_the_state_grows(dt):
    """The S4D paper's theorem: (Λ, B/2) of LegS's normal part has S4-LegS's kernel as n → ∞."""
    distances = [s4d_vs_s4_kernel_distance(n, dt) for n in (16, 32, 64, 128)]
    ratios = np.array(distances[1:]) / np.array(distances[:-1])
    assert np.all(ratios < 0.8)  # decreasing in n
    assert distances[-1] < 0.4 * distances[0] and distances[-1] < 0.25
    assert s4d_vs_s4_kernel_distance(128, dt, scale=1.0) > 0.9  # the 1/2 is needed


def test_transfer_function_of_a_dense_system_matches_its_diagonalization():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((12, 12)) / np.sqrt(12) - 2 * np.eye(12)  # non-normal, stable
    B, C = rng.standard_normal(12), rng.standard_normal(12)
    omega = np.linspace(-30, 30, 61)
    Lambda, V = np.linalg.eig(A)  # a generic A: a well-conditioned diagonalization
    assert np.linalg.cond(V) < 1e3
    dense = transfer_function(A, B, C, omega)
    diagonal = transfer_function(Lambda, np.linalg.solve(V, B), C @ V, omega)
    np.testing.assert_allclose(dense, diagonal, rtol=1e-10)
    one_by_one = [C @ np.linalg.solve(1j * w * np.eye(12) - A, B) for w in omega]
    np.testing.assert_allclose(dense, one_by_one, rtol=1e-12)
    scalar = transfer_function(np.array([-2.0]), [3.0], [0.5], [4.0])
    np.testing.assert_allclose(scalar, 0.5 * 3.0 / (4j + 2))


def test_ptd_transfer_function_is_closer_to_legs_than_s4d_legs_on_high_frequency_noise():
    """PTD paper: S4D-LegS (Λ, B/2) converges to HiPPO-LegS only on smooth inputs; PTD uniformly."""
    n, eps = 64, 1e-2
    A, B = transition("legs", n)
    C = np.random.default_rng(0).standard_normal(n) / np.sqrt(n)
    Lambda, _, B_eig, V = nplr("legs", n)
    omega = np.sort(np.concatenate([np.linspace(0, np.pi / 1e-3, 4001), Lambda.imag]))
    smooth = np.exp(-(omega**2) / 2)
    noisy = smooth + 0.1 * (omega >= 20)  # |U(ω)|: a smooth input plus flat high-frequency noise
    G = transfer_function(A, B, C, omega)
    G_s4d = transfer_function(with_conjugates(Lambda), with_conjugates(B_eig) / 2, C @ V, omega)
    lam_ptd, V_ptd = perturb_then_diagonalize(A, eps)
    G_ptd = transfer_function(lam_ptd, np.linalg.solve(V_ptd, B), C @ V_ptd, omega)

    def output_error(G_init, U):
        return np.linalg.norm((G_init - G) * U) / np.linalg.norm(G * U)

    assert output_error(G_ptd, noisy) < 0.01 < 1 < output_error(G_s4d, noisy)
    assert output_error(G_s4d, smooth) < 0.05  # S4D is fine on the smooth input alone
    sup_error = [np.abs(g - G).max() / np.abs(G).max() for g in (G_ptd, G_s4d)]
    assert sup_error[0] < 0.01 < 10 < sup_error[1]
    assert np.linalg.cond(V_ptd) < 1e8 and np.linalg.cond(np.linalg.eig(A)[1]) > 1e15


def test_perturb_then_diagonalize_reconstructs_A_plus_a_perturbation_of_norm_eps():
    A, _ = hippo_legs(16)
    for eps in (1e-3, 0.1):
        lam, V = perturb_then_diagonalize(A, eps, seed=3)
        E = V @ np.diag(lam) @ np.linalg.inv(V) - A
        np.testing.assert_allclose(np.linalg.norm(E, 2), eps, rtol=1e-5)
        assert np.abs(E.imag).max() < 1e-9  # a real perturbation
        np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0)
    again, _ = perturb_then_diagonalize(A, 0.1, seed=3)
    np.testing.assert_array_equal(again, lam)
    other, _ = perturb_then_diagonalize(A, 0.1, seed=4)
    assert not np.allclose(np.sort_complex(other), np.sort_complex(lam))


def test_ptd_bounds_the_condition_number_of_V_that_legs_itself_makes_singular():
    A, _ = hippo_legs(32)
    unperturbed = np.linalg.cond(perturb_then_diagonalize(A, 0.0)[1])
    assert unperturbed > 1e15  # diagonalizing HiPPO-LegS itself is ill-posed
    conds = [np.linalg.cond(perturb_then_diagonalize(A, eps)[1]) for eps in (1e-2, 1e-1, 1.0)]
    assert all(np.isfinite(c) for c in conds) and conds[0] < 1e6
    assert conds[0] > conds[1] > conds[2]  # κ(V) falls roughly like 1 / eps
