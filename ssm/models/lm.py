"""LanguageModel: a causal LM over any recurrent registered layer, with cached, compiled-once
generation (parallel prefill, then recurrent decoding), and its checkpoints.

Notation: b batch, l length, l0 prompt length, d = d_model, v vocabulary.
"""

import functools
import json
import math
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from ssm.layers.registry import LAYERS
from ssm.models.sequence import DTYPES, ResidualBlock

OPTIONS_FILE = "model.json"
PARAMS_DIR = "params"


def top_k_filter(logits, k: int):
    """Keep the k largest logits of each row, -inf elsewhere (ties with the k-th are kept).

    Args:
      logits: (..., v).   k: 1 <= k <= v.

    Returns:
      (..., v) filtered logits.
    """
    kth_largest = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth_largest, logits, -jnp.inf)


def top_p_filter(logits, p: float):
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p.

    Args:
      logits: (..., v).   p: 0 < p <= 1.

    Returns:
      (..., v) filtered logits (-inf outside the set).
    """
    ordered = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the strictly likelier tokens
    threshold = jnp.min(jnp.where(mass_before < p, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_token(key, logits, *, temperature: float, top_k: int | None, top_p: float | None):
    """Next token per row: argmax if ``temperature == 0``, else sampled from the filtered softmax.

    Filters apply after the temperature: top-k, then top-p.  logits: (b, v) -> (b,) int32.
    """
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


class LanguageModel(nnx.Module):
    """Causal LM over any recurrent registered layer: embedding -> n_layers residual blocks
    (x + update(layer(RMSNorm(x)))) -> RMSNorm -> tied head (h @ embedding.T).

    ``output``: the residual update after the layer, as in ``SequenceModel`` ("glu", "linear",
    "none"); "auto" is "none" for layers with their own output projection (Mamba), else "glu".
    The residual stream is float32 whatever ``dtype`` (the blocks' compute dtype); logits are
    float32. The last projection of each block is scaled by 1/sqrt(n_layers) (GPT-2 / Mamba).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        *,
        layer: str = "mamba",
        layer_options: dict | None = None,
        output: Literal["auto", "glu", "linear", "none"] = "auto",
        dtype: Literal["float32", "bfloat16"] = "float32",
        rngs: nnx.Rngs,
    ):
        layer_cls = LAYERS.get(layer)
        layer_options = dict(layer_options or {})
        if dtype not in DTYPES:
            raise ValueError(
                f"LanguageModel dtype={dtype!r} is not valid; valid: {', '.join(DTYPES)}"
            )
        for name, value in dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers).items():
            if value < 1:
                raise ValueError(f"LanguageModel {name} must be >= 1, got {value}")
        if output == "auto":
            output = "none" if layer_cls.output_projection else "glu"
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.layer, self.output, self.dtype = layer, output, dtype
        self.layer_options = tuple(sorted(layer_options.items()))  # hashable: part of the graphdef
        compute = DTYPES[dtype]
        self.embedding = nnx.Embed(
            vocab_size,
            d_model,
            dtype=compute,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )
        block = dict(norm="rms", prenorm=True, activation="gelu", output=output, dropout=0.0)
        self.blocks = nnx.List(
            ResidualBlock(
                d_model,
                layer_cls(d_model, **layer_options, dtype=compute, rngs=rngs),
                **block,
                dtype=compute,
                rngs=rngs,
            )
            for _ in range(n_layers)
        )
        for b in self.blocks:
            if not b.layer.recurrent:
                raise ValueError(
                    f"LanguageModel is causal: layer {layer!r} with these layer_options has no "
                    "recurrent state; set layer_options.bidirectional=false"
                )
            last = b.out if b.out is not None else b.layer.out_proj
            last.kernel[...] = last.kernel[...] / math.sqrt(n_layers)
        self.final_norm = nnx.RMSNorm(d_model, epsilon=1e-5, dtype=compute, rngs=rngs)

    def options(self) -> dict:
        """The constructor's arguments (without rngs), JSON-serializable."""
        return dict(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            layer=self.layer,
            layer_options=dict(self.layer_options),
            output=self.output,
            dtype=self.dtype,
        )

    def _logits(self, h):
        return self.embedding.attend(self.final_norm(h)).astype(jnp.float32)

    def __call__(self, tokens, *, state=None, return_state=False, segment_ids=None):
        """Parallel mode. tokens: (b, l) int -> logits (b, l, v) float32 [and the state].

        ``state``: a state from ``initial_state`` or an earlier call to continue from;
        ``return_state``: also return the state after the last position (prompt prefill).
        ``segment_ids``: (b, l) ints, packed rows (a layer with ``packs_segments``): each
        sequence is run as if alone (``state`` continues the first of each row).
        """
        h = self.embedding(tokens).astype(jnp.float32)
        states = [None] * self.n_layers if state is None else list(state)
        run = dict(train=False, key=None, return_state=return_state, segment_ids=segment_ids)
        for i, block in enumerate(self.blocks):
            out = block(h, None, state=states[i], **run)
            h, states[i] = out if return_state else (out, None)
        logits = self._logits(h)
        return (logits, tuple(states)) if return_state else logits

    def initial_state(self, batch_size: int) -> tuple:
        """Empty state: one per layer."""
        return tuple(block.layer.initial_state(batch_size) for block in self.blocks)

    def step(self, token, state: tuple):
        """One token. token: (b,) int -> (logits (b, v) float32, state); cost independent of l."""
        h = self.embedding(token).astype(jnp.float32)
        new_state = []
        for block, layer_state in zip(self.blocks, state, strict=True):
            h, layer_state = block.step(h, layer_state)
            new_state.append(layer_state)
        return self._logits(h), tuple(new_state)

    def generate(
        self,
        prompt,
        max_new_tokens: int,
        *,
        key=None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_token: int | None = None,
    ):
        """Continue ``prompt`` by ``max_new_tokens`` tokens: ``generate(self, ...)``."""
        return generate(
            self,
            prompt,
            max_new_tokens,
            vocab_size=self.vocab_size,
            key=key,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_token=stop_token,
        )


def generate(
    model,
    prompt,
    max_new_tokens: int,
    *,
    vocab_size: int,
    key=None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_token: int | None = None,
):
    """Continue ``prompt`` by ``max_new_tokens`` tokens of a causal ``model`` with its
    recurrent cache.

    ``model`` is any module with ``model(tokens, return_state=True) -> (logits, state)`` and
    ``model.step(token, state) -> (logits, state)`` over a vocabulary of ``vocab_size``:
    a ``LanguageModel``, or a ``SequenceModel`` trained with the causal_lm objective.

    The prompt goes through one parallel call (``return_state=True``), then each new token
    is sampled and fed back through ``step`` in a ``lax.scan``; both are one jitted
    function, compiled once per (shapes, sampling settings) and reused for every later call.

    Args:
      prompt: (b, l0) int tokens, l0 >= 1.
      max_new_tokens: number of tokens to append.
      key: PRNG key, needed when ``temperature > 0``.
      temperature: 0 = greedy (argmax); otherwise logits are divided by it before sampling.
      top_k: sample only among the k most likely tokens.
      top_p: sample only among the smallest set of most likely tokens with probability >= p.
      stop_token: once a row emits it, the rest of that row is filled with it.

    Returns:
      (b, l0 + max_new_tokens) int32 tokens, the prompt first.
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be (b, l0) integer tokens with l0 >= 1, got {prompt.shape}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key (or temperature=0)")
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be in [1, {vocab_size}] or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if stop_token is not None and not 0 <= stop_token < vocab_size:
        raise ValueError(f"stop_token must be in [0, {vocab_size}) or None, got {stop_token}")
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        prompt.astype(jnp.int32),
        jax.random.key(0) if key is None else key,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        stop_token=stop_token,
    )


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "stop_token"),
)
def _generate(
    graphdef, state, prompt, key, *, max_new_tokens, temperature, top_k, top_p, stop_token
):
    """The body of ``LanguageModel.generate``: parallel prefill, decoding scan -> (b, l0 + new)."""
    model = nnx.merge(graphdef, state)
    batch_size = prompt.shape[0]
    logits, cache = model(prompt, return_state=True)
    logits = logits[:, -1]

    def decode(carry, step_key):
        logits, cache, stopped = carry
        token = sample_token(step_key, logits, temperature=temperature, top_k=top_k, top_p=top_p)
        if stop_token is not None:
            token = jnp.where(stopped, stop_token, token)
            stopped = stopped | (token == stop_token)
        logits, cache = model.step(token, cache)
        return (logits, cache, stopped), token

    stopped = jnp.zeros((batch_size,), bool)
    keys = jax.random.split(key, max_new_tokens)
    _, new_tokens = jax.lax.scan(decode, (logits, cache, stopped), keys)  # (new, b)
    return jnp.concatenate([prompt, new_tokens.T], axis=1)


def save_lm(path: str | Path, model: LanguageModel) -> None:
    """Write ``model`` to the folder ``path``: ``model.json`` (options) and orbax ``params/``."""
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    (path / OPTIONS_FILE).write_text(json.dumps(model.options(), indent=2) + "\n")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / PARAMS_DIR, nnx.to_pure_dict(nnx.state(model)), force=True)


def _mamba_lm_layout(params: dict) -> dict:
    """A LanguageModel(layer="mamba") parameter tree in the layout of the former MambaLM."""
    blocks = params["blocks"]
    return {
        "embedding": params["embedding"],
        "norms": {i: block["norm"] for i, block in blocks.items()},
        "layers": {i: block["layer"] for i, block in blocks.items()},
        "final_norm": params["final_norm"],
    }


def load_lm(path: str | Path) -> LanguageModel:
    """The LanguageModel that ``save_lm`` wrote to ``path``.

    A checkpoint of the former ``MambaLM`` (its model.json has no ``layer``) loads as
    ``LanguageModel(layer="mamba")``: the same parameters, rearranged.
    """
    path = Path(path).absolute()
    if not (path / OPTIONS_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(
            f"no language model checkpoint at {path}: expected {OPTIONS_FILE} and {PARAMS_DIR}/ "
            "(written by ssm.models.save_lm)"
        )
    options = json.loads((path / OPTIONS_FILE).read_text())
    former_mamba_lm = "layer" not in options
    abstract_model = nnx.eval_shape(lambda: LanguageModel(**options, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract_model)
    like = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(
            path / PARAMS_DIR, _mamba_lm_layout(like) if former_mamba_lm else like
        )
    if former_mamba_lm:
        blocks = {
            i: {"norm": params["norms"][i], "layer": params["layers"][i]} for i in like["blocks"]
        }
        params = {
            "embedding": params["embedding"],
            "blocks": blocks,
            "final_norm": params["final_norm"],
        }
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
