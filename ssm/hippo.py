"""HiPPO matrices and their normal-plus-low-rank (NPLR) and diagonal forms."""

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


def legs_diagonal(n: int):
    """Eigenvalues of the normal part of HiPPO-LegS (the S4D-LegS init), one of each conjugate pair.

    Returns:
      (n // 2,) complex128, real parts -1/2, imaginary parts > 0 in increasing order.
    """
    S, _ = nplr_legs(n)
    real = np.mean(np.diagonal(S))
    imag = np.linalg.eigvalsh(-1j * (S - real * np.eye(n)))  # skew part is i * Hermitian
    imag = np.sort(imag)[n - n // 2 :]
    return real + 1j * imag
