"""Long convolutions by FFT: y = k * u along the length axis, causal or bidirectional."""

import jax.numpy as jnp


def long_conv(u, k, k_reverse=None):
    """Convolve u with a kernel as long as the sequence, in O(l log l).

    Causal: ``y[t] = sum_{s<=t} k[t-s] u[s]``. With ``k_reverse`` (bidirectional) an anticausal
    term is added: ``y[t] += sum_{s>=t} k_reverse[s-t] u[s]``, i.e. a causal convolution of the
    reversed sequence, reversed back.

    Args:
      u: (b, l, ...) input; the trailing axes broadcast against the kernel's.
      k: (l_k, ...) causal kernel, l_k <= l (shorter kernels are zero-padded).
      k_reverse: optional (l_k, ...) anticausal kernel.

    Returns:
      (b, l, ...) float32 output.
    """
    length = u.shape[1]
    if k.shape[0] > length:
        k = k[:length]
    pad = [(0, length - k.shape[0])] + [(0, 0)] * (k.ndim - 1)
    k = jnp.pad(k.astype(jnp.float32), pad)
    u = u.astype(jnp.float32)
    n_fft = 2 * length
    if k_reverse is None:
        kernel = k
    else:
        k_reverse = jnp.pad(k_reverse[:length].astype(jnp.float32), pad)
        # Circular layout of length 2l: lag j >= 0 at index j, lag -j at index 2l - j.
        kernel = jnp.concatenate([k, jnp.zeros_like(k[:1]), k_reverse[1:][::-1]], axis=0)
        kernel = kernel.at[0].add(k_reverse[0])
    k_f = jnp.fft.rfft(kernel, n=n_fft, axis=0)
    u_f = jnp.fft.rfft(u, n=n_fft, axis=1)
    y = jnp.fft.irfft(u_f * k_f, n=n_fft, axis=1)
    return y[:, :length]
