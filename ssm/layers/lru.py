"""LRU: the Linear Recurrent Unit ("Resurrecting Recurrent Neural Networks for Long Sequences").

Notation: b batch, l length, h = d_model channels, n = d_state complex states.

    h_t = λ ⊙ h_{t-1} + γ ⊙ (B u_t),    y_t = Re(C h_t) + D ⊙ u_t,

with λ = exp(-exp(ν_log) + i exp(θ_log)) and γ = exp(γ_log), γ = √(1 - |λ|²) at init.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ssm.config import Fraction, PositiveFloat, PositiveInt
from ssm.init import lru_ring_init
from ssm.layers.base import SequenceLayer, canonical_dtype, check_order, last_valid_state
from ssm.layers.registry import register_layer
from ssm.ops.linear_scan import LINEAR_SCAN, linear_scan
from ssm.ops.numerics import HIGHEST
from ssm.params import SSMParam


@register_layer("lru")
class LRU(SequenceLayer):
    """Diagonal complex linear recurrence, run by ``linear_scan`` (λ shared over time).

    Init as in the paper's Appendix A: ring init of λ (``r_min`` <= |λ| <= ``r_max``, phase in
    [0, ``max_phase``]), B (n, h) and C (h, n) complex normal with variance 1/(2h) and 1/n per
    part, D (h,) standard normal. ν_log, θ_log, γ_log, B and C are SSMParams (complex ones stored
    as real arrays with a trailing 2); D is an ordinary parameter. ``bidirectional`` adds a
    reversed scan of the same recurrence read out by its own C, summed with the forward one.
    ``impl`` picks the ``LINEAR_SCAN`` implementation. The state is (b, n) complex64.
    Packed sequences (``segment_ids``): both scans restart at every sequence start.
    """

    packs_segments = True

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        d_state: PositiveInt = 64,
        r_min: Fraction = 0.0,
        r_max: Fraction = 0.99,
        max_phase: PositiveFloat = 2 * math.pi,
        bidirectional: bool = False,
        impl: LINEAR_SCAN.impl_type = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_order("LRU", strict=True, r_min=r_min, r_max=r_max)
        LINEAR_SCAN.check(impl, "LRU impl")
        self.d_model, self.d_output, self.d_state = d_model, d_model, d_state
        self.bidirectional, self.impl = bidirectional, impl
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        h, n = d_model, d_state
        directions = 2 if bidirectional else 1

        nu_log, theta_log, gamma_log = lru_ring_init(rngs.params(), n, r_min, r_max, max_phase)
        self.nu_log, self.theta_log = SSMParam(nu_log), SSMParam(theta_log)
        self.gamma_log = SSMParam(gamma_log)
        self.B = SSMParam(jax.random.normal(rngs.params(), (n, h, 2)) / math.sqrt(2 * h))
        self.C = SSMParam(jax.random.normal(rngs.params(), (directions, h, n, 2)) / math.sqrt(n))
        self.D = nnx.Param(jax.random.normal(rngs.params(), (h,), self.param_dtype))

    @property
    def recurrent(self) -> bool:
        return not self.bidirectional

    def eigenvalues(self):
        """λ, (n,) complex64."""
        return jnp.exp(jax.lax.complex(-jnp.exp(self.nu_log[...]), jnp.exp(self.theta_log[...])))

    def _inputs(self, u):
        """γ ⊙ (B u): (..., h) float32 -> (..., n) complex64."""
        bu = jnp.einsum("...h,nhc->...nc", u, self.B[...], precision=HIGHEST)
        return jnp.exp(self.gamma_log[...]) * jax.lax.complex(bu[..., 0], bu[..., 1])

    def _readout(self, states, direction=0):
        """Re(C h): (..., n) complex -> (..., h) float32, with the C of ``direction``."""
        parts = jnp.stack([states.real, -states.imag], axis=-1)  # Re(C h) = C_re h_re - C_im h_im
        return jnp.einsum("...nc,hnc->...h", parts, self.C[direction], precision=HIGHEST)

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
        lam, bu = self.eigenvalues(), self._inputs(u)  # (n,), (b, l, n)
        scan = dict(segment_ids=segment_ids, impl=self.impl)
        states, last = linear_scan(lam, bu, h0=state, return_state=True, **scan)
        y = self._readout(states) + self.D[...].astype(jnp.float32) * u
        if self.bidirectional:  # padded inputs are zero, so the reversed scan starts from zero
            y = y + self._readout(linear_scan(lam, bu, reverse=True, **scan), direction=1)
        if mask is not None:
            y = jnp.where(mask[..., None], y, 0.0)
        y = y.astype(self.compute_dtype(x))
        if not return_state:
            return y
        return y, last_valid_state(states, last, mask, state)

    def initial_state(self, batch_size: int):
        """Zero state, (b, n) complex64."""
        self.require_state("initial_state()")
        return jnp.zeros((batch_size, self.d_state), jnp.complex64)

    def step(self, x_t, state):
        """One recurrent step. x_t: (b, h), state: (b, n) -> (y_t (b, h), state)."""
        self.require_state("step()")
        u = x_t.astype(jnp.float32)
        state = self.eigenvalues() * state + self._inputs(u)
        y = self._readout(state) + self.D[...].astype(jnp.float32) * u
        return y.astype(self.compute_dtype(x_t)), state
