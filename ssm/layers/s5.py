"""S5: one multi-input, multi-output diagonal SSM per layer ("Simplified State Space Layers for
Sequence Modeling", Smith, Warrington & Linderman 2023).

Notation: b batch, l length, h = d_model channels, p = d_state latent states shared by all
channels, n stored states: p / 2 with conjugate symmetry (each one of a conjugate pair, hence
the 2 Re), p without; c = 2 readouts if bidirectional, else 1.

    x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t,    y_t = 2 Re(C̃ x_t) + D ⊙ u_t    (Re without conj_sym),

with Λ̄, B̄ the zoh / bilinear discretization of Λ (n,), B̃ (n, h) by per-state steps Δ (n,).
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.config import PositiveFloat, PositiveInt
from ssm.hippo import hippo_legs, legs_normal_eig, perturb_then_diagonalize
from ssm.layers.base import SequenceLayer, canonical_dtype, check_order, last_valid_state
from ssm.layers.registry import register_layer
from ssm.ops.kernels import DISCRETIZATIONS, Discretization, discretize_diagonal
from ssm.ops.linear_scan import LINEAR_SCAN, linear_scan
from ssm.ops.numerics import HIGHEST
from ssm.params import SSMParam

S5Init = Literal["hippo_n", "ptd"]
S5_INITS = ("hippo_n", "ptd")
S5CInit = Literal["trunc_standard_normal", "lecun_normal", "complex_normal"]
S5_C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")


def s5_eigenbasis(init: S5Init, d_state: int, blocks: int, conj_sym: bool, ptd_eps: float):
    """Diagonal Λ and eigenvectors of S5's initial state matrix, block-diagonal with ``blocks``
    equal blocks of size k = p / blocks.

    Each block is HiPPO-N (the normal part of HiPPO-LegS, diagonalized by a unitary V, V⁻¹ = Vᴴ)
    or, for "ptd", HiPPO-LegS itself perturbed by ||E||₂ = ``ptd_eps`` and diagonalized. With
    ``conj_sym`` each block keeps the k / 2 eigenvalues with Im > 0, their eigenvectors and the
    matching rows of V⁻¹: for real B and a real state, x = 2 Re(V x̃) with x̃ = V⁻¹ B u dynamics.

    Returns:
      Λ: (n,) complex128;  V: (p, n);  V⁻¹: (n, p), block-diagonal.
    """
    size = d_state // blocks
    if init == "hippo_n":
        eigenvalues, V = legs_normal_eig(size)
        V_inv = V.conj().T
    else:
        eigenvalues, V = perturb_then_diagonalize(hippo_legs(size)[0], ptd_eps)
        V_inv = np.linalg.inv(V)
    if conj_sym:  # legs_normal_eig sorts by imaginary part: the upper half is Im > 0
        keep = slice(size // 2, None)
        eigenvalues, V, V_inv = eigenvalues[keep], V[:, keep], V_inv[keep]
    eye = np.eye(blocks)
    return np.tile(eigenvalues, blocks), np.kron(eye, V), np.kron(eye, V_inv)


def _pair(z):
    """Complex (...) -> real (..., 2) float32 of (real, imaginary) parts."""
    return jnp.stack([z.real, z.imag], axis=-1).astype(jnp.float32)


def _complex(pair):
    """Real (..., 2) -> complex (...)."""
    return jax.lax.complex(pair[..., 0], pair[..., 1])


@register_layer("s5")
class S5(SequenceLayer):
    """S5 layer: a MIMO diagonal SSM run by ``linear_scan`` (Λ̄ shared over time), recurrent step().

    Init as the S5 code (``ssm_init.py``, ``ssm.py``): Λ from ``s5_eigenbasis`` (``init``
    hippo_n or ptd with ``ptd_eps``; ``blocks`` J); B̃ = V⁻¹ B with B (p, h) lecun normal;
    C̃ = C V with C (h, p) complex, real and imaginary parts ``trunc_standard_normal`` (lecun
    normal per row, fan_in p) or ``lecun_normal`` (fan_in p h), or C̃ ``complex_normal``
    (variance 1/2 per part, no V); log Δ (n,) log-uniform in [dt_min, dt_max]; D (h,) standard
    normal. ``clip_eigs`` clips Re Λ to <= -1e-4 in use (S5's left-half-plane option).

    Λ, B̃, C̃ (real arrays with a trailing (real, imaginary) 2) and log Δ are SSMParams: own
    learning rate, no weight decay, float32. D is an ordinary parameter (``param_dtype``), as in
    S5, whose optimizer puts D with the regular weights (global lr, weight decay). S5's
    published runs also give C that regular treatment (and B too, "BfastandCdecay"); here C̃,
    a parameter of the SSM, follows the SSMParam policy.

    ``bidirectional`` adds the reversed scan of the same Λ̄, B̄, read out by a second C̃ (as S5's
    C1, C2); it has no recurrent state. ``impl`` picks the ``LINEAR_SCAN`` implementation. Math
    is float32 / complex64 whatever ``dtype``; the state is (b, n) complex64.
    Packed sequences (``segment_ids``): both scans restart at every sequence start.
    """

    packs_segments = True

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        d_state: PositiveInt = 256,
        blocks: PositiveInt = 8,
        init: S5Init = "hippo_n",
        ptd_eps: PositiveFloat = 0.1,
        c_init: S5CInit = "trunc_standard_normal",
        disc: Discretization = "zoh",
        dt_min: PositiveFloat = 1e-3,
        dt_max: PositiveFloat = 1e-1,
        conj_sym: bool = True,
        clip_eigs: bool = False,
        bidirectional: bool = False,
        impl: LINEAR_SCAN.impl_type = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._check(d_state, blocks, init, c_init, disc, dt_min, dt_max, conj_sym)
        LINEAR_SCAN.check(impl, "S5 impl")
        self.d_model, self.d_output, self.d_state = d_model, d_model, d_state
        self.disc, self.conj_sym, self.clip_eigs = disc, conj_sym, clip_eigs
        self.bidirectional, self.impl = bidirectional, impl
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        h, p, copies = d_model, d_state, 2 if bidirectional else 1

        eigenvalues, V, V_inv = s5_eigenbasis(init, d_state, blocks, conj_sym, ptd_eps)
        V, V_inv = jnp.asarray(V, jnp.complex64), jnp.asarray(V_inv, jnp.complex64)
        n = eigenvalues.shape[0]
        self.Lambda = SSMParam(_pair(jnp.asarray(eigenvalues)))  # (n, 2)
        B = nnx.initializers.lecun_normal()(rngs.params(), (p, h))  # fan_in p
        self.B = SSMParam(_pair(jnp.matmul(V_inv, B, precision=HIGHEST)))  # (n, h, 2)
        if c_init == "complex_normal":
            C = jax.random.normal(rngs.params(), (copies, h, n, 2)) * np.sqrt(0.5)
        else:
            per_row = c_init == "trunc_standard_normal"  # fan_in p, else p * h
            scaling = nnx.initializers.variance_scaling(
                1.0, "fan_in", "truncated_normal", batch_axis=(0, 1) if per_row else (0,)
            )
            C = _pair(jnp.matmul(_complex(scaling(rngs.params(), (copies, h, p, 2))), V))
        self.C = SSMParam(C)  # (c, h, n, 2)
        self.D = nnx.Param(jax.random.normal(rngs.params(), (h,), self.param_dtype))
        log_dt_range = (np.log(dt_min), np.log(dt_max))
        self.log_dt = SSMParam(jax.random.uniform(rngs.params(), (n,), jnp.float32, *log_dt_range))

    @staticmethod
    def _check(d_state, blocks, init, c_init, disc, dt_min, dt_max, conj_sym):
        """One-line ValueErrors for inconsistent options."""
        if d_state % blocks:
            raise ValueError(
                f"S5 d_state must be divisible by blocks, got d_state={d_state}, blocks={blocks}"
            )
        if conj_sym and (d_state // blocks) % 2:
            raise ValueError(
                f"S5 conj_sym needs an even block size d_state / blocks, got "
                f"{d_state} / {blocks} = {d_state // blocks}; use conj_sym=False"
            )
        for name, value, valid in (
            ("init", init, S5_INITS),
            ("c_init", c_init, S5_C_INITS),
            ("disc", disc, DISCRETIZATIONS),
        ):
            if value not in valid:
                raise ValueError(f"unknown S5 {name} {value!r}; valid: {', '.join(valid)}")
        if init == "ptd" and conj_sym:
            raise ValueError(
                "S5 init 'ptd' needs conj_sym=False: perturbed HiPPO-LegS has real eigenvalues, "
                "which have no conjugate partner"
            )
        check_order("S5", dt_min=dt_min, dt_max=dt_max)

    @property
    def recurrent(self) -> bool:
        return not self.bidirectional

    def eigenvalues(self):
        """Λ, (n,) complex64 (real parts clipped to <= -1e-4 with ``clip_eigs``)."""
        real, imag = self.Lambda[..., 0], self.Lambda[..., 1]
        return jax.lax.complex(jnp.minimum(real, -1e-4) if self.clip_eigs else real, imag)

    def discrete(self):
        """(Λ̄, B̄, C̃): (n,), (n, h), (c, h, n) complex64."""
        # Λ as (n, 1) against B̃ (n, h): discretize_diagonal broadcasts one Δ per state.
        log_dA, dB = discretize_diagonal(
            self.eigenvalues()[:, None], _complex(self.B[...]), self.log_dt[...], self.disc
        )
        return jnp.exp(log_dA[:, 0]), dB, _complex(self.C[...])

    def _inputs(self, u, dB):
        """B̄ u: (..., h) float32 -> (..., n) complex64."""
        return _complex(jnp.einsum("...h,nhc->...nc", u, _pair(dB), precision=HIGHEST))

    def _readout(self, states, C):
        """2 Re(C̃ x) (Re(C̃ x) without conj_sym): (..., n) complex, C (h, n) -> (..., h) f32."""
        parts = jnp.stack([states.real, -states.imag], axis=-1)  # Re(C x) = C_re x_re - C_im x_im
        y = jnp.einsum("...nc,hnc->...h", parts, _pair(C), precision=HIGHEST)
        return 2.0 * y if self.conj_sym else y

    def __call__(self, x, mask=None, *, state=None, return_state=False, segment_ids=None):
        """Parallel mode.  x: (b, l, h) -> y: (b, l, h); padded positions are zeroed.

        ``state`` (b, n) complex: the state before x[:, 0]. ``return_state``: also return the
        state after the last valid position. ``segment_ids`` (b, l) ints: packed sequences.
        """
        if state is not None or return_state:
            self.require_state("state in or out")
        u = x.astype(jnp.float32)  # (b, l, h)
        if mask is not None:
            u = jnp.where(mask[..., None], u, 0.0)
        dA, dB, C = self.discrete()
        bu = self._inputs(u, dB)  # (b, l, n)
        scan = dict(segment_ids=segment_ids, impl=self.impl)
        states, last = linear_scan(dA, bu, h0=state, return_state=True, **scan)
        y = self._readout(states, C[0]) + self.D[...].astype(jnp.float32) * u
        if self.bidirectional:  # padded inputs are zero, so the reversed scan starts from zero
            y = y + self._readout(linear_scan(dA, bu, reverse=True, **scan), C[1])
        if mask is not None:
            y = jnp.where(mask[..., None], y, 0.0)
        y = y.astype(self.compute_dtype(x))
        if not return_state:
            return y
        return y, last_valid_state(states, last, mask, state)

    def initial_state(self, batch_size: int):
        """Zero state, (b, n) complex64."""
        self.require_state("initial_state()")
        return jnp.zeros((batch_size, self.Lambda.shape[0]), jnp.complex64)

    def step(self, x_t, state):
        """One recurrent step. x_t: (b, h), state: (b, n) -> (y_t (b, h), state)."""
        self.require_state("step()")
        u = x_t.astype(jnp.float32)
        dA, dB, C = self.discrete()
        state = dA * state + self._inputs(u, dB)
        y = self._readout(state, C[0]) + self.D[...].astype(jnp.float32) * u
        return y.astype(self.compute_dtype(x_t)), state
