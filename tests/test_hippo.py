import numpy as np
import pytest

from ssm.hippo import (
    hippo_legs,
    legs_diagonal,
    legs_normal_eig,
    nplr_legs,
    perturb_then_diagonalize,
)


def test_hippo_legs_matches_its_closed_form():
    A, B = hippo_legs(4)
    assert A[2, 1] == -np.sqrt(5) * np.sqrt(3)
    assert A[3, 3] == -4 and A[1, 2] == 0
    np.testing.assert_allclose(B, np.sqrt([1, 3, 5, 7]))


def test_legs_normal_part_is_normal_and_low_rank_correction_recovers_A():
    S, P = nplr_legs(16)
    np.testing.assert_allclose(S @ S.T, S.T @ S, atol=1e-9)
    np.testing.assert_allclose(S - np.outer(P, P), hippo_legs(16)[0], atol=1e-12)


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
