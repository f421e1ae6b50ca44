"""Training objectives: what the model predicts and which positions count in the loss.

- ``classify``: the dataset's ``label`` (one class per example, or per position with
  ``label_mask``), as every classification benchmark.
- ``causal_lm``: the next token. Position t predicts ``inputs[t + 1]``; it counts where both
  are valid (and, for packed rows, in the same segment). Needs a causal layer.
- ``masked_lm``: denoising. Each valid token is replaced by the mask token (id ``vocab_size``,
  one past the data's vocabulary) with probability ``mask_rate``; the loss is on those positions
  only. Bidirectional layers are allowed.

Every function takes tokens (b, l) int and mask (b, l) bool and returns (inputs, labels, scored):
the model's inputs (b, l), the per-position targets (b, l) int32 and the positions that count
(b, l) bool.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Objective = Literal["classify", "causal_lm", "masked_lm"]
OBJECTIVES = ("classify", "causal_lm", "masked_lm")
LANGUAGE_MODELLING = ("causal_lm", "masked_lm")


def causal_lm_targets(tokens, mask, segment_ids=None):
    """Next-token targets: labels[t] = tokens[t + 1], scored where t and t + 1 are valid.

    segment_ids: (b, l) int or None; a position whose next token starts another segment (a
    packed row) does not count.
    """
    labels = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    scored = mask[:, :-1] & mask[:, 1:]
    if segment_ids is not None:
        scored = scored & (segment_ids[:, :-1] == segment_ids[:, 1:])
    scored = jnp.concatenate([scored, jnp.zeros_like(mask[:, :1])], axis=1)
    return tokens, labels.astype(jnp.int32), scored


def masked_lm_targets(key, tokens, mask, *, rate: float, mask_token: int):
    """Denoising targets: each valid token is masked with probability ``rate`` (independently).

    Returns the corrupted tokens (masked positions hold ``mask_token``), labels = the original
    tokens, scored = the masked positions.
    """
    chosen = jax.random.bernoulli(key, rate, tokens.shape) & mask
    inputs = jnp.where(chosen, mask_token, tokens)
    return inputs, tokens.astype(jnp.int32), chosen


def language_model_metrics(loss: float, byte_level: bool) -> dict[str, float]:
    """Perplexity and bits per token (``bpb``, bits per byte, for byte-level data) of a mean
    cross-entropy ``loss`` in nats per token."""
    bits = loss / math.log(2)
    return {
        "perplexity": math.exp(min(loss, 700.0)),
        "bpb" if byte_level else "bits_per_token": bits,
    }


def unigram_bits(train_tokens, eval_tokens, vocab_size: int) -> float:
    """Bits per token of ``eval_tokens`` under the add-one-smoothed unigram distribution of
    ``train_tokens`` (both 1-D int arrays): the baseline a language model must beat."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size) + 1.0
    log2_p = np.log2(counts / counts.sum())
    return float(-log2_p[np.asarray(eval_tokens)].mean())
