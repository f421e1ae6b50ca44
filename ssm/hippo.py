"""HiPPO matrices (LegS, LegT, LagT, FouT), their normal-plus-low-rank (NPLR) and diagonal forms,
perturb-then-diagonalize (PTD), and the transfer function that compares them.

Conventions are those of the S4 reference code (state-spaces/s4, ``src/models/hippo/hippo.py``):
x' = A x + B u, float64 / complex128 NumPy. The NPLR and diagonal forms keep one eigenvalue of
each conjugate pair (n2 = n // 2 of them); ``with_conjugates`` restores the full basis.
"""

import numpy as np
import scipy.linalg

MEASURES = ("legs", "legt", "lagt", "fout")
_MEASURE_RANK = {"legs": 1, "legt": 2, "lagt": 1, "fout": 1}  # rank of the correction to normal


def _check_measure(measure: str):
    if measure not in MEASURES:
        raise ValueError(f"unknown HiPPO measure {measure!r}; valid: {', '.join(MEASURES)}")


def hippo_legs(n: int):
    """HiPPO-LegS transition (A, B) for x' = A x + B u.

    A[i, j] = -sqrt(2i+1) sqrt(2j+1) if i > j, -(i+1) if i == j, 0 otherwise; B[i] = sqrt(2i+1).

    Returns:
      A: (n, n) float64, B: (n,) float64.
    """
    q = np.sqrt(2.0 * np.arange(n) + 1.0)
    A = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(n) + 1.0)
    return A, q.copy()


def _fout_B(n: int):
    """FouT's B: 1 for the constant, sqrt(2) for each cosine (even index > 0), 0 for sines."""
    B = np.where(np.arange(n) % 2 == 0, np.sqrt(2.0), 0.0)
    B[0] = 1.0
    return B


def transition(measure: str, n: int):
    """HiPPO transition (A, B) of a measure, as the S4 reference code's ``transition``.

    legs: ``hippo_legs``.
    legt: A[i, j] = -1/2 sqrt(2i+1) sqrt(2j+1) (1 if j <= i else (-1)^(i-j)); B[i] = sqrt(2i+1)/2
      (HiPPO's LegT with window 1, A and B halved as in the S4 code).
    lagt: A[i, j] = -1 if j < i, -1/2 if i == j, 0 otherwise; B[i] = 1.
    fout: state 0 the constant, 2k and 2k+1 the cosine and sine of frequency k (state 1, the sine
      of frequency 0, stays 0); A = R - B Bᵀ with R[2k, 2k+1] = -πk, R[2k+1, 2k] = πk;
      B = 1, 0, √2, 0, √2, ... (How to Train Your HiPPO's FouT, halved as in the S4 code).

    Returns:
      A: (n, n) float64, B: (n,) float64.
    """
    _check_measure(measure)
    if measure == "legs":
        return hippo_legs(n)
    q = np.arange(n, dtype=np.float64)
    if measure == "legt":
        r = np.sqrt(2 * q + 1)
        lower = q[:, None] >= q[None, :]
        sign = np.where(lower, 1.0, (-1.0) ** np.abs(q[:, None] - q[None, :]))
        return -0.5 * sign * np.outer(r, r), 0.5 * r
    if measure == "lagt":
        return -np.tril(np.ones((n, n)), -1) - 0.5 * np.eye(n), np.ones(n)
    k = np.arange(1, n // 2)  # frequencies of the complete (cosine, sine) pairs
    rotation = np.zeros((n, n))
    rotation[2 * k, 2 * k + 1] = -np.pi * k
    rotation[2 * k + 1, 2 * k] = np.pi * k
    B = _fout_B(n)
    return rotation - np.outer(B, B), B


def rank_correction(measure: str, n: int, rank: int = 1):
    """P with A + Pᵀ P = c I + skew-symmetric, a normal matrix (the S4 code's ``rank_correction``).

    legs: P = sqrt(i + 1/2) (rank 1, c = -1/2);  legt: sqrt(2i+1)/√2 on the odd, then on the even
    indices (rank 2, c = 0);  lagt: 1/√2 (rank 1, c = 0);  fout: P = B (rank 1, c = 0).

    Returns:
      (max(rank, r), n) float64, r the measure's own rank; rows beyond r are zero.
    """
    _check_measure(measure)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    q = np.arange(n, dtype=np.float64)
    if measure == "legs":
        P = np.sqrt(q + 0.5)[None]
    elif measure == "legt":
        r = np.sqrt((2 * q + 1) / 2)
        P = np.stack([np.where(q % 2 == 1, r, 0.0), np.where(q % 2 == 0, r, 0.0)])
    elif measure == "lagt":
        P = np.full((1, n), np.sqrt(0.5))
    else:
        P = _fout_B(n)[None]
    return np.concatenate([P, np.zeros((max(rank - len(P), 0), n))])


def _normal_eig(S):
    """Eigendecomposition of S = c I + (skew-symmetric): c = mean of diag(S); the skew part is i
    times a Hermitian matrix, whose ``eigh`` gives the imaginary parts (increasing) and V unitary.
    """
    real = np.mean(np.diagonal(S))
    real = 0.0 if abs(real) < 1e-12 else real  # legt's diagonal cancels only up to rounding
    imag, V = np.linalg.eigh(-1j * (S - real * np.eye(len(S))))
    return real + 1j * imag, V


def with_conjugates(x):
    """The full basis of a stored half: (..., n2) -> (..., 2·n2), x then its conjugate."""
    return np.concatenate([x, np.conj(x)], axis=-1)


def nplr(measure: str, n: int, rank: int = 1, b_clip: float | None = None):
    """NPLR form of a HiPPO matrix in the eigenbasis of its normal part (the S4 code's ``nplr``).

    S = A + Pᵀ P (``rank_correction``) is c I + skew, diagonalized stably by ``eigh`` of its skew
    part: S = V diag(Λf) Vᴴ with V unitary. Of each conjugate pair the eigenvalue with Im > 0 is
    kept, in increasing order of Im (the S4 code keeps the Im < 0 halves, the conjugates); a zero
    pair (FouT's constant) is kept once, first, with eigenvector (r1 + i r2)/√2 for a real
    orthonormal basis r1, r2 of its eigenspace. Each eigenvector's phase is fixed: its first entry
    of non-negligible size is real positive. In the full basis, with Λf = with_conjugates(Λ),
    Pf = with_conjugates(P), Bf = with_conjugates(B):

      A = V (diag(Λf) − Pfᵀ conj(Pf)) Vᴴ = V diag(Λf) Vᴴ − Σ_r (V Pf[r])(V Pf[r])ᴴ,
      V Pfᵀ = Pᵀ (the real rank correction),  V Bf = B (when ``b_clip`` is None),

    i.e. A is unitarily equivalent to Λ − P Pᴴ of the S4 layer, with B and P mapped by Vᴴ. The
    diagonal (S4D-style) init of a measure is (Λ, B) with P dropped. Re Λ = -1/2 for legs, 0 (a
    marginally stable diagonal) for legt, lagt, fout; fout's Λ is iπk, k = 0..n2-1.

    Args:
      measure: one of ``MEASURES``.  n: even state size.  rank: at least 1; raised to the
        measure's own rank (legt: 2), extra rows of P are zero.
      b_clip: if set, Im B is clipped to [-b_clip, b_clip] (the S4 code's ``B_clip``, 2.0 there).

    Returns:
      Λ: (n2,) complex128; P: (r, n2) complex128 = Vᴴ P; B: (n2,) complex128 = Vᴴ B;
      V: (n, n) complex128 unitary, V[:, n2:] = conj(V[:, :n2]), column k the eigenvector of Λf[k].
    """
    _check_measure(measure)
    if n < 2 or n % 2:
        raise ValueError(f"nplr needs an even state size n >= 2, got {n}")
    A, B = transition(measure, n)
    P = rank_correction(measure, n, rank)
    eigenvalues, eigenvectors = _normal_eig(A + P.T @ P)
    real, imag = eigenvalues.real[0], eigenvalues.imag
    zero = np.abs(imag) <= 1e-9 * max(1.0, np.abs(imag).max())
    # The zero eigenspace is real (S is real): a real orthonormal basis of it, paired up.
    null = eigenvectors[:, zero]
    real_basis = np.linalg.svd(np.concatenate([null.real, null.imag], 1))[0][:, : zero.sum()]
    pairs = (real_basis[:, 0::2] + 1j * real_basis[:, 1::2]) / np.sqrt(2)
    positive = (imag > 0) & ~zero
    V = np.concatenate([pairs, eigenvectors[:, positive]], 1)
    Lambda = np.concatenate([np.zeros(pairs.shape[1]), 1j * imag[positive]]) + real
    first = np.argmax(np.abs(V) > 1e-8 * np.abs(V).max(0), axis=0)
    phase = V[first, np.arange(V.shape[1])]
    V = V * (np.abs(phase) / phase)
    B_eig, P_eig = V.conj().T @ B, P @ V.conj()
    if b_clip is not None:
        B_eig = B_eig.real + 1j * np.clip(B_eig.imag, -b_clip, b_clip)
    return Lambda, P_eig, B_eig, with_conjugates(V)


def nplr_legs(n: int):
    """NPLR form of HiPPO-LegS: A = S - P Pᵀ with S normal (−½ I plus a skew-symmetric matrix).

    Returns:
      S: (n, n), P: (n,) with S = A + P Pᵀ.
    """
    A, _ = hippo_legs(n)
    P = rank_correction("legs", n)[0]
    return A + np.outer(P, P), P


def legs_normal_eig(n: int):
    """Eigendecomposition S = V diag(Λ) Vᴴ of the normal part of HiPPO-LegS (HiPPO-N, S5's init).

    As S5's ``make_DPLR_HiPPO``: the real part is the mean of diag(S) (all -1/2); the skew part
    S + I/2 is i times a Hermitian matrix, whose ``eigh`` gives the imaginary parts and V.

    Returns:
      Λ: (n,) complex128, imaginary parts increasing (conjugate pairs ±ω).
      V: (n, n) complex128 unitary, column k the eigenvector of Λ[k].
    """
    return _normal_eig(nplr_legs(n)[0])


def legs_diagonal(n: int):
    """Eigenvalues of the normal part of HiPPO-LegS (the S4D-LegS init), one of each conjugate pair.

    For even n this is Λ of ``nplr("legs", n)``.

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


def ptd_diagonal(n: int, eps: float, seed: int = 0):
    """S4-PTD's diagonal system: HiPPO-LegS + E (``perturb_then_diagonalize``) in half storage.

    Kept: the eigenvalue with Im > 0 of each conjugate pair, and every real eigenvalue (its own
    conjugate), m = n/2 + (number of real eigenvalues)/2 modes in all. For any real C the kernel
    of (A + E, B, C) is then 2 Re Σ_k (C W)_k B̃_k Λ̄_k^l, with B̃ = (V⁻¹ B) and W = V on the kept
    modes, W's real-eigenvalue columns halved (the 2 Re counts them twice).

    Returns:
      Λ: (m,) complex128, pairs first (Im increasing), then the real ones (decreasing);
      B̃: (m,) complex128;  W: (n, m) complex128.
    """
    A, B = hippo_legs(n)
    eigenvalues, V = perturb_then_diagonalize(A, eps, seed)
    B_eig = np.linalg.solve(V, B)
    imag = eigenvalues.imag
    real = np.abs(imag) <= 1e-9 * np.abs(eigenvalues)
    pairs = np.flatnonzero(~real & (imag > 0))
    reals = np.flatnonzero(real)
    pairs, reals = pairs[np.argsort(imag[pairs])], reals[np.argsort(-eigenvalues[reals].real)]
    keep = np.concatenate([pairs, reals])
    W = V[:, keep] * np.where(real[keep], 0.5, 1.0)
    return eigenvalues[keep], B_eig[keep], W


def transfer_function(A, B, C, omega):
    """G(iω) = C (iω I − A)⁻¹ B of the SSM (A, B, C) on the imaginary axis.

    A dense A is never diagonalized (ill-posed for HiPPO-LegS): its complex Schur form
    A = Q T Qᴴ (Q unitary) turns each resolvent into one back-substitution, vectorized over ω.

    Args:
      A: (n, n) dense, or (n,) the diagonal of a diagonal A.  B, C: (n,).  omega: (w,) real.

    Returns:
      (w,) complex128.
    """
    s = 1j * np.asarray(omega, np.float64)[:, None]  # (w, 1)
    A, B, C = (np.asarray(x, np.complex128) for x in (A, B, C))
    if A.ndim == 1:
        return np.sum(C * B / (s - A), axis=-1)
    T, Q = scipy.linalg.schur(A, output="complex")
    b, n = Q.conj().T @ B, len(B)
    x = np.zeros((len(s), n), np.complex128)  # x = (iω − T)⁻¹ b, one row per ω
    for i in reversed(range(n)):
        coupled = np.einsum("wj,j->w", x[:, i + 1 :], T[i, i + 1 :])
        x[:, i] = (b[i] + coupled) / (s[:, 0] - T[i, i])
    return x @ (C @ Q)
