"""HiPPO matrices, their normal-plus-low-rank (NPLR) and diagonal forms, and PTD."""

import numpy as np


def hippo_legs(n: int):
    """HiPPO-LegS transition (A, B) for x' = A x + B u.

    A[i, j] = -sqrt(2i+1) sqrt(2j+1) if i > j, -(i+1) if i == j, 0 otherwise; B[i] = sqrt(2i+1).

    Returns:
      A: (n, n) float64, B: (n,) float64.
    """
    q = np.sqrt(2.0 * np.arange(n) + 1.0)
    A = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(n) + 1.0)
    return A, q.copy()


def nplr_legs(n: int):
    """NPLR form of HiPPO-LegS: A = S - P Pᵀ with S normal (−½ I plus a skew-symmetric matrix).

    Returns:
      S: (n, n), P: (n,) with S = A + P Pᵀ.
    """
    A, _ = hippo_legs(n)
    P = np.sqrt(np.arange(n) + 0.5)
    return A + np.outer(P, P), P


def legs_normal_eig(n: int):
    """Eigendecomposition S = V diag(Λ) Vᴴ of the normal part of HiPPO-LegS (HiPPO-N, S5's init).

    As S5's ``make_DPLR_HiPPO``: the real part is the mean of diag(S) (all -1/2); the skew part
    S + I/2 is i times a Hermitian matrix, whose ``eigh`` gives the imaginary parts and V.

    Returns:
      Λ: (n,) complex128, imaginary parts increasing (conjugate pairs ±ω).
      V: (n, n) complex128 unitary, column k the eigenvector of Λ[k].
    """
    S, _ = nplr_legs(n)
    real = np.mean(np.diagonal(S))
    imag, V = np.linalg.eigh(-1j * (S - real * np.eye(n)))
    return real + 1j * imag, V


def legs_diagonal(n: int):
    """Eigenvalues of the normal part of HiPPO-LegS (the S4D-LegS init), one of each conjugate pair.

    Returns:
      (n // 2,) complex128, real parts -1/2, imaginary parts > 0 in increasing order.
    """
    return legs_normal_eig(n)[0][n - n // 2 :]


def perturb_then_diagonalize(A, eps: float, seed: int = 0):
    """PTD ("Robustifying State-space Models for Long Sequences via Approximate Diagonalization"):
    diagonalize A + E, E a real Gaussian matrix scaled to spectral norm ||E||₂ = eps.

    For a non-normal A such as HiPPO-LegS, diagonalizing A itself is ill-posed (V's condition
    number grows exponentially with n: ~1e20 at n = 64). The perturbation bounds it: κ(V) is
    finite and falls roughly like 1/eps (HiPPO-LegS, n = 64: ~2e7 at eps = 1e-3, ~2e5 at 0.1),
    at a backward error of exactly ||E||₂ = eps. A + E is real, so its complex eigenvalues come
    in conjugate pairs, but some may be real.

    Args:
      A: (n, n) real.  eps: ||E||₂ >= 0.  seed: NumPy seed of E.

    Returns:
      Λ: (n,) complex128, V: (n, n) complex128 with unit columns: V diag(Λ) V⁻¹ = A + E.
    """
    E = np.random.default_rng(seed).standard_normal(np.shape(A))
    E *= eps / np.linalg.norm(E, 2)
    eigenvalues, V = np.linalg.eig(np.asarray(A, np.float64) + E)
    return eigenvalues.astype(np.complex128), V.astype(np.complex128)
