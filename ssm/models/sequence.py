"""SequenceModel: encoder -> N residual blocks of a registered sequence layer -> pooling -> head."""

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from ssm.config import Fraction, PositiveInt, checks_numbers, options_dataclass
from ssm.layers.registry import LAYERS

# "gelu" is exact (erf), as in the S4 code; "gelu_tanh" is the tanh approximation.
ACTIVATIONS = {
    "gelu": functools.partial(nnx.gelu, approximate=False),
    "gelu_tanh": functools.partial(nnx.gelu, approximate=True),
    "relu": nnx.relu,
    "silu": nnx.silu,
    "tanh": jnp.tanh,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ResidualBlock(nnx.Module):
    """x + out(dropout(act(layer(norm(x))))) (pre-norm) or norm(x + ...) (post-norm).

    ``output="none"`` is for layers with their own gating and output projection (Mamba): the
    residual update is then ``dropout(layer(norm(x)))``, with no activation or extra projection.
    "glu" projects to 2d and gates (S5's "full_glu"); S5's half GLUs gate with one d x d
    projection W of a = dropout(act(z)): "half_glu1" a ⊙ σ(W a), "half_glu2" z ⊙ σ(W a).
    ``norm``: "layer", "batch" or "rms". Like its layer it can start from and return a state,
    and run one position at a time (``step``, inference mode).
    """

    def __init__(self, d_model, layer, *, norm, prenorm, activation, output, dropout, dtype, rngs):
        self.layer, self.prenorm, self.activation = layer, prenorm, ACTIVATIONS[activation]
        if norm == "layer":
            self.norm = nnx.LayerNorm(d_model, dtype=dtype, rngs=rngs)
        elif norm == "rms":
            self.norm = nnx.RMSNorm(d_model, epsilon=1e-5, dtype=dtype, rngs=rngs)
        else:
            self.norm = nnx.BatchNorm(d_model, dtype=dtype, momentum=0.9, rngs=rngs)
        self.output = output
        if output in ("none", "half_glu1", "half_glu2") and layer.d_output != d_model:
            raise ValueError(
                f"model.output={output!r} needs a layer whose output size is d_model={d_model}, "
                f"got {layer.d_output}; use output 'glu' or 'linear'"
            )
        if output == "none":
            self.out = None
        else:
            width = 2 * d_model if output == "glu" else d_model
            self.out = nnx.Linear(layer.d_output, width, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def _norm(self, x, mask, train):
        if isinstance(self.norm, nnx.BatchNorm):
            mask = None if mask is None else mask[..., None]
            return self.norm(x, use_running_average=not train, mask=mask)
        return self.norm(x)

    def _update(self, x, z, mask, train, key):
        """x + the residual update from the layer's output z (..., d_output)."""
        if self.output in ("half_glu1", "half_glu2"):
            a = self.dropout(self.activation(z), deterministic=not train, rngs=key)
            z = (a if self.output == "half_glu1" else z) * nnx.sigmoid(self.out(a))
        else:
            if self.out is not None:
                z = self.activation(z)
            z = self.dropout(z, deterministic=not train, rngs=key)
            if self.out is not None:
                z = self.out(z)
            if self.output == "glu":
                z = nnx.glu(z, axis=-1)
        x = x + z
        return x if self.prenorm else self._norm(x, mask, train)

    def __call__(self, x, mask, *, train, key, state=None, return_state=False, segment_ids=None):
        """x: (b, l, d), mask: (b, l) bool or None, segment_ids: (b, l) ints or None (packed
        rows, for a layer with ``packs_segments``) -> (b, l, d) [and the layer's state]."""
        z = self._norm(x, mask, train) if self.prenorm else x
        if state is None and not return_state:
            return self._update(x, self.layer(z, mask, segment_ids=segment_ids), mask, train, key)
        z, state = self.layer(z, mask, state=state, return_state=True, segment_ids=segment_ids)
        x = self._update(x, z, mask, train, key)
        return (x, state) if return_state else x

    def step(self, x_t, state):
        """One position in inference mode: x_t (b, d) -> (x_t, state)."""
        z = self._norm(x_t, None, False) if self.prenorm else x_t
        z, state = self.layer.step(z, state)
        return self._update(x_t, z, None, False, None), state


class SequenceModel(nnx.Module):
    """A residual stack of sequence layers for classification or per-position prediction.

    Inputs are real-valued (b, l, d_input) or tokens (b, l) (give ``vocab_size``). An optional
    (b, l) bool mask marks valid positions: padded positions are zeroed before every layer and
    never enter the pooling. Output: (b, num_classes), or (b, l, num_classes) with pooling "none".

    ``paired=True`` makes a two-tower model (LRA Retrieval): inputs (b, 2, l[, d_input]) and mask
    (b, 2, l); both members go through the same backbone and the head sees [u, v, u*v, u-v].

    With pooling "none" and recurrent layers it is also a causal language model: the parallel
    mode starts from and returns a state (one per block), ``step`` runs one position, and
    ``ssm.models.generate`` samples from it. With pooling "none" it also takes packed rows
    (``segment_ids``, for layers with ``packs_segments``): each sequence runs as if alone.
    """

    @checks_numbers
    def __init__(
        self,
        *,
        num_classes: PositiveInt,
        d_input: PositiveInt | None = None,
        vocab_size: PositiveInt | None = None,
        paired: bool = False,
        layer: str = "s4d",
        layer_options: dict | None = None,
        d_model: PositiveInt = 128,
        n_layers: PositiveInt = 4,
        dropout: Fraction = 0.1,
        activation: Literal["gelu", "gelu_tanh", "relu", "silu", "tanh"] = "gelu",
        output: Literal["glu", "linear", "half_glu1", "half_glu2", "none"] = "glu",
        norm: Literal["layer", "batch", "rms"] = "layer",
        prenorm: bool = True,
        pooling: Literal["mean", "last", "none"] = "mean",
        dtype: Literal["float32", "bfloat16"] = "float32",
        rngs: nnx.Rngs,
    ):
        if (d_input is None) == (vocab_size is None):
            raise ValueError("SequenceModel needs exactly one of d_input (real) or vocab_size")
        compute = DTYPES[dtype]
        if vocab_size is not None:
            self.encoder = nnx.Embed(vocab_size, d_model, dtype=compute, rngs=rngs)
        else:
            self.encoder = nnx.Linear(d_input, d_model, dtype=compute, rngs=rngs)
        layer_cls = LAYERS.get(layer)
        block = dict(norm=norm, prenorm=prenorm, activation=activation, output=output)
        self.blocks = nnx.List(
            ResidualBlock(
                d_model,
                layer_cls(d_model, **(layer_options or {}), dtype=compute, rngs=rngs),
                **block,
                dropout=dropout,
                dtype=compute,
                rngs=rngs,
            )
            for _ in range(n_layers)
        )
        self.final_norm = nnx.LayerNorm(d_model, dtype=compute, rngs=rngs) if prenorm else None
        if paired and pooling == "none":
            raise ValueError("a paired (two-tower) SequenceModel needs pooling 'mean' or 'last'")
        self.head = nnx.Linear(4 * d_model if paired else d_model, num_classes, rngs=rngs)
        self.pooling, self.paired = pooling, paired
        self.num_classes = num_classes

    def __call__(
        self,
        x,
        mask=None,
        *,
        train: bool = False,
        key=None,
        state=None,
        return_state=False,
        segment_ids=None,
    ):
        """x: (b, l, d_input) or (b, l) tokens; mask: (b, l) bool; key: dropout PRNG key.

        ``state`` (from ``initial_state`` or an earlier call) and ``return_state`` need pooling
        "none": the output is then (logits (b, l, num_classes), state after the last position).
        ``segment_ids`` (b, l) ints (packed rows) need pooling "none" too.
        """
        if train and key is None:
            raise ValueError("SequenceModel(train=True) needs a dropout key")
        if segment_ids is not None and (self.pooling != "none" or self.paired):
            raise ValueError(
                "SequenceModel packed rows (segment_ids) need pooling 'none' and unpaired inputs"
            )
        if state is not None or return_state:
            if self.pooling != "none" or self.paired:
                raise ValueError("a SequenceModel state needs pooling 'none' and unpaired inputs")
            h, state = self.features(
                x, mask, train, key, state=state, return_state=True, segment_ids=segment_ids
            )
            return self.head(h), state
        if self.paired:
            b = x.shape[0]
            mask = None if mask is None else mask.reshape(2 * b, *mask.shape[2:])
            h = self.features(x.reshape(2 * b, *x.shape[2:]), mask, train, key).reshape(b, 2, -1)
            u, v = h[:, 0], h[:, 1]
            return self.head(jnp.concatenate([u, v, u * v, u - v], axis=-1))
        return self.head(self.features(x, mask, train, key, segment_ids=segment_ids))

    def features(self, x, mask, train, key, *, state=None, return_state=False, segment_ids=None):
        """Pooled backbone features: (b, d_model), or (b, l, d_model) with pooling "none"
        [and the blocks' states after the last position]; ``segment_ids`` go to every layer."""
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        h = self.encoder(x)
        states = [None] * len(self.blocks) if state is None else list(state)
        for i, block in enumerate(self.blocks):
            block_key = None if key is None else jax.random.fold_in(key, i)
            run = dict(train=train, key=block_key, segment_ids=segment_ids)
            if return_state:
                h, states[i] = block(h, mask, **run, state=states[i], return_state=True)
            else:
                h = block(h, mask, **run)
        h = self._final(h)
        if return_state:
            return h, tuple(states)
        if self.pooling == "mean":
            weights = mask.astype(jnp.float32)[..., None]
            h = jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        elif self.pooling == "last":
            last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
            h = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        return h

    def _final(self, h):
        if self.final_norm is not None:
            h = self.final_norm(h)
        return h.astype(jnp.float32)

    def initial_state(self, batch_size: int) -> tuple:
        """Empty state: one per block (layers without a recurrent state raise)."""
        return tuple(block.layer.initial_state(batch_size) for block in self.blocks)

    def step(self, x_t, state: tuple):
        """One position in inference mode: x_t (b,) tokens or (b, d_input) -> (logits
        (b, num_classes), state)."""
        h = self.encoder(x_t)
        new_state = []
        for block, block_state in zip(self.blocks, state, strict=True):
            h, block_state = block.step(h, block_state)
            new_state.append(block_state)
        return self.head(self._final(h)), tuple(new_state)


ModelOptions = options_dataclass(
    SequenceModel.__init__,
    "ModelOptions",
    skip=("num_classes", "d_input", "vocab_size", "paired", "layer", "layer_options", "rngs"),
)
