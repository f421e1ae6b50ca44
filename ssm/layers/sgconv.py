"""SGConv: structured global convolution ("What Makes Convolutional Models Great on Long Sequence
Modeling?", Li et al. 2022), after the authors' ``GConv`` (github.com/ctlllll/SGConv, "cat" mode).

The kernel is a concatenation of n sub-kernels w_i of d = ``kernel_dim`` samples each; w_0 and
w_1 span d positions, w_i (i >= 1) is upsampled by 2^(i-1) to span d 2^(i-1), so n scales cover
d 2^(n-1) positions. Longer-range scales weigh less (``decay``) and the kernel is divided by its
norm at initialization, Z, a fixed constant (the authors compute it once, detached, and keep it).

Notation: b batch, l length, h = d_model channels, c kernel copies per channel (``channels``,
twice that if bidirectional), n scales, d = ``kernel_dim``.
"""

import math
import typing
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssm.config import PositiveFloat, PositiveInt
from ssm.layers.base import SequenceLayer, canonical_dtype, check_order
from ssm.layers.registry import register_layer
from ssm.ops.conv import LONG_CONV, long_conv
from ssm.params import SSMParam

Decay = Literal["scale", "power"]
Interpolate = Literal["linear", "nearest"]


def num_scales(length: int, kernel_dim: int) -> int:
    """Fewest scales whose concatenation (d 2^(n-1) positions) covers ``length``."""
    return 1 + max(0, math.ceil(math.log2(length / kernel_dim)))


def upsample(w, factor: int, mode: Interpolate = "linear"):
    """Upsample the last axis by an integer ``factor`` as ``torch.nn.functional.interpolate``
    does (``align_corners=False``; "nearest" repeats each sample). (..., d) -> (..., d factor)."""
    d = w.shape[-1]
    if mode == "nearest":
        return jnp.repeat(w, factor, axis=-1)
    source = np.maximum((np.arange(d * factor) + 0.5) / factor - 0.5, 0.0)
    low = np.floor(source).astype(np.int32)
    high = np.minimum(low + 1, d - 1)
    frac = (source - low).astype(np.float32)
    return w[..., low] * (1.0 - frac) + w[..., high] * frac


def multiscale_kernel(w, length: int, decay, *, mode: Decay, interpolate: Interpolate):
    """The unnormalized SGConv kernel over the first ``length`` positions, zero past coverage.

    Args:
      w: (n, c, h, d) sub-kernels; only the scales needed to cover ``length`` are used.
      length: number of positions (static).
      decay: (h,) per channel: the ratio between consecutive scales' weights (mode "scale",
        scale i is weighted decay^-i) or the exponent of a (t + 1)^-decay envelope ("power").
      mode: "scale" or "power".   interpolate: "linear" or "nearest".

    Returns:
      (c, h, length) float32.
    """
    n = min(w.shape[0], num_scales(length, w.shape[-1]))
    pieces = []
    for i in range(n):
        piece = upsample(w[i], 2 ** max(i - 1, 0), interpolate)  # (c, h, d 2^(i-1))
        if mode == "scale":
            piece = piece * (decay[:, None] ** -i)
        pieces.append(piece)
    k = jnp.concatenate(pieces, axis=-1)[..., :length]
    if mode == "power":
        k = k * (jnp.arange(k.shape[-1]) + 1.0) ** -decay[:, None]
    return jnp.pad(k, [(0, 0), (0, 0), (0, length - k.shape[-1])])


@register_layer("sgconv")
class SGConv(SequenceLayer):
    """Structured global convolution: a multi-scale, decaying kernel as long as the sequence.

    ``l_max`` sets how many scales there are (enough to cover it); a shorter sequence uses only
    the scales it needs, a longer one sees a kernel that is zero past their coverage (as the
    authors pad). ``decay`` "scale" weighs scale i by m^-i with m = linspace(decay_min,
    decay_max) over channels (the authors' multiplier m^(n-1-i): the same kernel once
    normalized); "power" instead multiplies the kernel by (t + 1)^-γ with γ = linspace(decay_min,
    decay_max) (the authors' ``learnable_fixed`` mode, whose γ is uniform in that range; equal
    when decay_min == decay_max). The kernel norm Z is computed from the initial sub-kernels over
    the full coverage and stays fixed, as the authors' detached norm (a non-trainable
    ``nnx.Variable`` in ``param_dtype``, so it is checkpointed with the model).

    A long convolution has no finite state: ``recurrent`` is False and ``initial_state``,
    ``step`` and ``state=`` / ``return_state`` raise ``NoRecurrentState``. Output features:
    ``channels * d_model``. ``impl`` picks the long-convolution implementation (``LONG_CONV``).
    The bidirectional kernel's second half acts on the future, from lag -1 on (as the authors').
    """

    def __init__(
        self,
        d_model: PositiveInt,
        *,
        kernel_dim: PositiveInt = 64,
        l_max: PositiveInt = 1024,
        decay: Decay = "scale",
        decay_min: PositiveFloat = 2.0,
        decay_max: PositiveFloat = 2.0,
        interpolate: Interpolate = "linear",
        channels: PositiveInt = 1,
        bidirectional: bool = False,
        impl: LONG_CONV.impl_type = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        for name, value, kind in [
            ("decay", decay, Decay),
            ("interpolate", interpolate, Interpolate),
        ]:
            valid = typing.get_args(kind)
            if value not in valid:
                raise ValueError(f"unknown SGConv {name} {value!r}; valid: {', '.join(valid)}")
        check_order("SGConv", decay_min=decay_min, decay_max=decay_max)
        LONG_CONV.check(impl, "SGConv impl")
        self.d_model, self.channels = d_model, channels
        self.decay_mode, self.interpolate = decay, interpolate
        self.decay_min, self.decay_max = decay_min, decay_max
        self.bidirectional, self.impl = bidirectional, impl
        self.dtype, self.param_dtype = canonical_dtype(dtype), canonical_dtype(param_dtype)
        self.d_output = channels * d_model
        copies = channels * (2 if bidirectional else 1)
        n = num_scales(l_max, kernel_dim)

        shape = (n, copies, d_model, kernel_dim)
        self.sub_kernels = SSMParam(jax.random.normal(rngs.params(), shape, jnp.float32))
        self.D = nnx.Param(jax.random.normal(rngs.params(), (channels, d_model), self.param_dtype))
        full = self.unnormalized_kernel(kernel_dim * 2 ** (n - 1))
        self.kernel_norm = nnx.Variable(jnp.linalg.norm(full, axis=-1).astype(self.param_dtype))

    def decay(self):
        """(h,) per-channel decay (see the class docstring), float32."""
        return jnp.linspace(self.decay_min, self.decay_max, self.d_model, dtype=jnp.float32)

    def unnormalized_kernel(self, length: int):
        """The kernel before division by Z, (copies, h, l) float32."""
        return multiscale_kernel(
            self.sub_kernels[...],
            length,
            self.decay(),
            mode=self.decay_mode,
            interpolate=self.interpolate,
        )

    def kernel(self, length: int):
        """Kernel, (copies, h, l) float32; copies = channels (2x if bidirectional)."""
        z = self.kernel_norm[...].astype(jnp.float32)
        return self.unnormalized_kernel(length) / z[..., None]

    @property
    def recurrent(self) -> bool:
        return False

    def require_state(self, what: str, reason="(a long convolution has no finite state)") -> None:
        super().require_state(what, reason)

    def __call__(self, x, mask=None, *, state=None, return_state=False):
        """x: (b, l, h) -> y: (b, l, channels * h); padded positions are zeroed."""
        if state is not None or return_state:
            self.require_state("state in or out")
        b, length, _ = x.shape
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)
        u = x.astype(jnp.float32)[:, :, None]  # (b, l, 1, h)
        k = jnp.moveaxis(self.kernel(length), -1, 0)  # (l, copies, h)
        c = self.channels
        if self.bidirectional:
            k_reverse = jnp.pad(k[:-1, c:], [(1, 0), (0, 0), (0, 0)])  # lag 0 is the causal one's
            y = long_conv(u, k[:, :c], k_reverse, impl=self.impl)
        else:
            y = long_conv(u, k, impl=self.impl)
        y = y + self.D[...].astype(jnp.float32) * u  # (b, l, c, h)
        if mask is not None:
            y = jnp.where(mask[..., None, None], y, 0)
        return y.reshape(b, length, self.d_output).astype(self.compute_dtype(x))

    def initial_state(self, batch_size: int):
        self.require_state("initial_state()")

    def step(self, x_t, state):
        self.require_state("step()")
