"""Diagonal-plus-low-rank (DPLR) SSMs, S4's parameterization: A = Λ − P Pᴴ, bilinear steps.

Notation: h channels, n2 stored state dims, c output copies per channel, r the rank of P, l
length. The SSM is real: its full state has 2·n2 dims in conjugate pairs, of which the first
n2 are stored (``full`` rebuilds both halves). Math is complex64 (complex128 for 64-bit inputs).

- ``dplr_kernel``: K_l = C Ā^l B̄ for l < L, exactly: the truncated generating function at the
  L-th roots of unity (Cauchy products through ``ssm.ops.cauchy`` and the Woodbury identity,
  then an inverse real FFT), with C̃ = C (I − Ā^L) computed so no aliased tail remains.
- ``dplr_step_matrices`` / ``dplr_step``: the recurrence x_t = Ā x_{t-1} + B̄ u_t, y_t = C x_t
  without ever forming Ā: two diagonal products and two rank-r corrections per step.
"""

import jax
import jax.numpy as jnp

from ssm.ops.cauchy import cauchy
from ssm.ops.numerics import HIGHEST, complex_dtype


def full(x):
    """Both conjugate halves of a stored half-basis vector: (..., n2) -> (..., 2·n2)."""
    return jnp.concatenate([x, jnp.conj(x)], axis=-1)


def small_solve(M, rhs):
    """M⁻¹ rhs for small (..., r, r) M by Gauss-Jordan without pivoting, unrolled over r.

    Only elementwise ops (no LAPACK call: XLA's CPU runtime was seen to deadlock running several
    LAPACK custom calls at once). M here is always I plus a matrix with positive semidefinite
    Hermitian part, for which elimination without pivoting is safe. rhs: (..., r, m).
    """
    for i in range(M.shape[-1]):
        pivot = M[..., i : i + 1, i : i + 1]
        row, rhs_row = M[..., i : i + 1, :] / pivot, rhs[..., i : i + 1, :] / pivot
        factor = M[..., :, i : i + 1]
        M, rhs = M - factor * row, rhs - factor * rhs_row
        M, rhs = M.at[..., i : i + 1, :].set(row), rhs.at[..., i : i + 1, :].set(rhs_row)
    return rhs


def dplr_dense_transition(Lambda, P, log_dt):
    """The dense discrete Ā = (2/Δ − A)⁻¹ (2/Δ + A) of the full basis, (h, 2n2, 2n2).

    Lambda: (h, n2) complex.  P: (r, h, n2) complex.  log_dt: (h,) real. The inverse is the
    Woodbury form of ``dplr_step_matrices``; nothing calls LAPACK.
    """
    Lf, Pf, _, two_over_dt, Dg, M = dplr_step_matrices(Lambda, P, jnp.zeros_like(Lambda), log_dt)
    low_rank = jnp.einsum("rhn,rhm->hnm", Pf, jnp.conj(Pf), precision=HIGHEST)
    plus = jax.vmap(jnp.diag)(two_over_dt + Lf) - low_rank  # 2/Δ + A
    DgP, PhDg = Dg[None] * Pf, jnp.conj(Pf) * Dg[None]  # Dg P and Pᴴ Dg: (r, h, N)
    inverse = jax.vmap(jnp.diag)(Dg) - jnp.einsum(
        "rhn,hrs,shm->hnm", DgP, M, PhDg, precision=HIGHEST
    )
    return jnp.einsum("hnk,hkm->hnm", inverse, plus, precision=HIGHEST)


def truncation_corrected_C(Lambda, P, C, log_dt, length: int):
    """C̃ = C (I − Ā^L) in the stored half basis, (c, h, n2): the C whose generating function at
    the L-th roots of unity has exactly the first L kernel values as its coefficients."""
    power = jnp.linalg.matrix_power(dplr_dense_transition(Lambda, P, log_dt), length)
    Cf = full(C.astype(power.dtype))
    return C - jnp.einsum("chn,hnm->chm", Cf, power, precision=HIGHEST)[..., : C.shape[-1]]


def dplr_kernel(Lambda, P, B, C, log_dt, length: int, *, impl="auto", **cauchy_options):
    """K[..., c, h, l] = C Ā^l B̄ (a real kernel) for l < ``length``, Ā, B̄ bilinear.

    Args:
      Lambda: (h, n2) complex diagonal.  P: (r, h, n2) complex low-rank factor (A = Λ − P Pᴴ).
      B: (..., h, n2) complex; leading dims give one kernel each (e.g. a batch of states).
      C: (c, h, n2) complex.  log_dt: (h,) real.  length: L.
      impl, cauchy_options: the ``ssm.ops.cauchy`` implementation and its options.

    Returns:
      (..., c, h, L) float32 (float64 for 64-bit inputs).
    """
    dtype = complex_dtype(Lambda.dtype, P.dtype, B.dtype, C.dtype, log_dt.dtype)
    Lambda, P, B, C = (a.astype(dtype) for a in (Lambda, P, B, C))
    r = P.shape[0]
    C = truncation_corrected_C(Lambda, P, C, log_dt, length)
    dt = jnp.exp(log_dt.astype(Lambda.real.dtype))[:, None]  # (h, 1)
    frequency = jnp.arange(length // 2 + 1)
    omega = jnp.exp(-2j * jnp.pi * frequency / length).astype(dtype)
    nyquist = 2 * frequency == length  # z = -1 (even L): g and 2/(1+z) are infinite there
    omega = jnp.where(nyquist, 0.0, omega)
    g = (2.0 / dt) * (1.0 - omega) / (1.0 + omega)  # (h, k)
    # The four Cauchy sums of the Woodbury identity over the conjugate-symmetric full basis.
    v = jnp.concatenate([C * B[..., None, :, :], jnp.conj(P) * B[..., None, :, :]], axis=-3)
    k_b = cauchy(v, g, Lambda, conjugate=True, impl=impl, **cauchy_options)  # (..., c + r, h, k)
    w = jnp.concatenate([C[:, None] * P[None], jnp.conj(P)[:, None] * P[None]], axis=0)
    k_p = cauchy(w, g, Lambda, conjugate=True, impl=impl, **cauchy_options)  # (c + r, r, h, k)
    c = C.shape[0]
    k00, k10 = k_b[..., :c, :, :], k_b[..., c:, :, :]  # (..., c, h, k), (..., r, h, k)
    k01, k11 = k_p[:c], k_p[c:]  # (c, r, h, k), (r, r, h, k)
    # C̃ R B - C̃ R P (I + Pᴴ R P)⁻¹ Pᴴ R B, solved per (h, k) in the rank-r space.
    gram = jnp.eye(r, dtype=dtype) + jnp.moveaxis(k11, (0, 1), (-2, -1))  # (h, k, r, r)
    rhs = jnp.moveaxis(k10, -3, -1)[..., None]  # (..., h, k, r, 1)
    solved = small_solve(jnp.broadcast_to(gram, rhs.shape[:-2] + (r, r)), rhs)[..., 0]
    correction = jnp.einsum("crhk,...hkr->...chk", k01, solved, precision=HIGHEST)
    spectrum = 2.0 / (1.0 + omega) * (k00 - correction)
    # At z = -1 the limit of 2/(1+z) (g - A)⁻¹ is Δ/2 · I: K̂ = Δ/2 · C̃ B over the full basis.
    limit = dt * jnp.sum(C * B[..., None, :, :], axis=-1).real[..., None]  # Δ/2 · 2 Re(Σ C̃B)
    spectrum = jnp.where(nyquist, limit, spectrum)
    return jnp.fft.irfft(spectrum, n=length, axis=-1)


def dplr_step_matrices(Lambda, P, B, log_dt):
    """What ``dplr_step`` needs, computed once per call rather than per token.

    Returns (Lf, Pf, Bf, two_over_dt, Dg, M) of the full basis: Λ (h, N), P (r, h, N), B (h, N),
    2/Δ (h, 1), Dg = 1/(2/Δ − Λ) (h, N) and M = (I + Pᴴ Dg P)⁻¹ (h, r, r), N = 2·n2.
    """
    dtype = complex_dtype(Lambda.dtype, P.dtype, B.dtype, log_dt.dtype)
    Lf, Pf, Bf = (full(a.astype(dtype)) for a in (Lambda, P, B))
    two_over_dt = (2.0 / jnp.exp(log_dt.astype(Lf.real.dtype)))[:, None]
    Dg = 1.0 / (two_over_dt - Lf)
    gram = jnp.einsum("ihn,hn,jhn->hij", jnp.conj(Pf), Dg, Pf, precision=HIGHEST)
    eye = jnp.broadcast_to(jnp.eye(P.shape[0], dtype=dtype), gram.shape)
    M = small_solve(eye + gram, eye)
    return Lf, Pf, Bf, two_over_dt, Dg, M


def dplr_apply_A(matrices, x):
    """A x = Λ x − P (Pᴴ x) in the full basis; x: (b, h, N)."""
    Lf, Pf = matrices[0], matrices[1]
    return Lf * x - jnp.einsum("rhn,brh->bhn", Pf, _project(Pf, x), precision=HIGHEST)


def _project(Pf, x):
    return jnp.einsum("rhn,bhn->brh", jnp.conj(Pf), x, precision=HIGHEST)


def dplr_step(matrices, x, u):
    """One bilinear step x ← (2/Δ − A)⁻¹ ((2/Δ + A) x + 2 B u) without forming Ā.

    matrices: from ``dplr_step_matrices``.  x: (b, h, n2) stored half of the state.  u: (b, h).
    Returns the new (b, h, n2) state.
    """
    _, Pf, Bf, two_over_dt, Dg, M = matrices
    xf = full(x)
    v = two_over_dt * xf + dplr_apply_A(matrices, xf) + 2.0 * Bf * u[..., None]
    v = Dg * v  # Woodbury: (2/Δ − Λ + P Pᴴ)⁻¹ = Dg − Dg P M Pᴴ Dg
    v = v - Dg * jnp.einsum("rhn,hrs,bsh->bhn", Pf, M, _project(Pf, v), precision=HIGHEST)
    return v[..., : x.shape[-1]]
