"""S4D: diagonal state-space layer ("On the Parameterization and Initialization of Diagonal SSMs").

Notation: b batch, l length, h = d_model channels, n2 = d_state / 2 complex state dims (each is
one of a conjugate pair, hence the ``2 Re``), c SSM copies per channel.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.hippo import legs_diagonal
from ssm.layers.registry import register_layer
from ssm.ops.conv import long_conv
from ssm.ops.kernels import HIGHEST, discretize_diagonal, vandermonde_kernel
from ssm.params import SSMParam

Init = Literal["legs", "lin", "inv", "real"]


def s4d_init_A(init: Init, d_state: int) -> np.ndarray:
    """Initial diagonal A of S4D, one of each conjugate pair.

    legs: eigenvalues of the normal part of HiPPO-LegS;  lin: -1/2 + iπk;
    inv: -1/2 + i n/π (n/(2k+1) - 1);  real: -(k+1).

    Returns:
      (d_state // 2,) complex128.
    """
    n2 = d_state // 2
    k = np.arange(n2)
    if init == "legs":
        return legs_diagonal(d_state)
    if init == "lin":
        return -0.5 + 1j * np.pi * k
    if init == "inv":
        return -0.5 + 1j * d_state / np.pi * (d_state / (2 * k + 1) - 1)
    if init == "real":
        return -(k + 1.0) + 0j
    raise ValueError(f"unknown S4D init {init!r}; valid: legs, lin, inv, real")


@register_layer("s4d")
class S4D(nnx.Module):
    """Diagonal SSM layer: parallel mode by Vandermonde kernel + FFT convolution, recurrent step().

    Kernel math runs in float32/complex64 whatever ``dtype``; the output is cast to ``dtype``.
    Output features: ``channels * d_model`` (the backbone's output projection mixes them).
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        init: Init = "legs",
        disc: Literal["zoh", "bilinear"] = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        channels: int = 1,
        bidirectional: bool = False,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if d_state < 2 or d_state % 2:
            raise ValueError(f"S4D d_state must be an even integer >= 2, got {d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(
                f"S4D needs 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}"
            )
        if channels < 1:
            raise ValueError(f"S4D channels must be >= 1, got {channels}")
        self.d_model, self.d_state, self.channels = d_model, d_state, channels
        self.disc, self.bidirectional, self.dtype = disc, bidirectional, dtype
        self.d_output = channels * d_model
        h, n2 = d_model, d_state // 2
        copies = channels * (2 if bidirectional else 1)

        u = jax.random.uniform(rngs.params(), (h,))
        self.log_dt = SSMParam(u * (np.log(dt_max) - np.log(dt_min)) + np.log(dt_min))
        A = np.broadcast_to(s4d_init_A(init, d_state), (h, n2))
        self.log_A_real = SSMParam(jnp.asarray(np.log(-A.real), jnp.float32))
        self.A_imag = SSMParam(jnp.asarray(A.imag, jnp.float32))
        self.B = SSMParam(jnp.stack([jnp.ones((h, n2)), jnp.zeros((h, n2))], -1))
        self.C = SSMParam(jax.random.normal(rngs.params(), (copies, h, n2, 2)) * np.sqrt(0.5))
        self.D = nnx.Param(jax.random.normal(rngs.params(), (channels, h)))

    def discrete(self):
        """(log Ā, dB, C) of the discretized SSM: (h, n2), (h, n2) complex64, (copies, h, n2)."""
        A = -jnp.exp(self.log_A_real[...]) + 1j * self.A_imag[...]
        B = jax.lax.complex(self.B[..., 0], self.B[..., 1])
        C = jax.lax.complex(self.C[..., 0], self.C[..., 1])
        log_dA, dB = discretize_diagonal(A, B, self.log_dt[...], self.disc)
        return log_dA, dB, C

    def kernel(self, length: int):
        """Kernel, (copies, h, l) float32; copies = channels (2x if bidirectional)."""
        return vandermonde_kernel(*self.discrete(), length)

    def __call__(self, x, mask=None):
        """Parallel mode.  x: (b, l, h) -> y: (b, l, channels * h); padded positions are zeroed."""
        b, length, h = x.shape
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)
        k = jnp.swapaxes(self.kernel(length).T, 1, 2)  # (l, copies, h)
        u = x.astype(jnp.float32)[:, :, None, :]  # (b, l, 1, h)
        if self.bidirectional:
            y = long_conv(u, k[:, : self.channels], k[:, self.channels :])
        else:
            y = long_conv(u, k)
        y = y + self.D[...] * u
        return y.reshape(b, length, self.d_output).astype(self.dtype)

    def initial_state(self, batch_size: int):
        """Zero state, (b, h, n2) complex64."""
        return jnp.zeros((batch_size, self.d_model, self.d_state // 2), jnp.complex64)

    def step(self, x_t, state):
        """One recurrent step. x_t: (b, h), state: (b, h, n2) -> (y_t (b, c*h), state)."""
        if self.bidirectional:
            raise ValueError("a bidirectional S4D has no recurrent step(); use bidirectional=False")
        log_dA, dB, C = self.discrete()
        u = x_t.astype(jnp.float32)
        state = jnp.exp(log_dA) * state + dB * u[..., None]
        y = (
            2.0 * jnp.einsum("chn,bhn->bch", C, state, precision=HIGHEST).real
            + self.D[...] * u[:, None, :]
        )
        return y.reshape(x_t.shape[0], self.d_output).astype(self.dtype), state
