import numpy as np

from ssm.hippo import hippo_legs, legs_diagonal, nplr_legs


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
