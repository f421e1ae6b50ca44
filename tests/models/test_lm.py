import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from ssm.models import LanguageModel, load_lm, save_lm
from ssm.models.lm import (
    OPTIONS_FILE,
    PARAMS_DIR,
    _generate,
    _mamba_lm_layout,
    top_k_filter,
    top_p_filter,
)
from ssm.params import SSMParam

VOCAB = 11
OPTIONS = dict(vocab_size=VOCAB, d_model=16, n_layers=2, layer_options=dict(d_state=4))
LAYER_OPTIONS = {"mamba": dict(d_state=4), "s4d": dict(d_state=8, dt_min=0.05)}


def make_lm(dtype="float32", layer="mamba"):
    options = {**OPTIONS, "layer": layer, "layer_options": LAYER_OPTIONS[layer]}
    model = LanguageModel(**options, dtype=dtype, rngs=nnx.Rngs(0))
    # sharpen the tied head so greedy choices are not decided by float rounding
    model.embedding.embedding[...] = model.embedding.embedding[...] * 50
    return model


@pytest.fixture(scope="module", params=["mamba", "s4d"])
def any_lm(request):
    return make_lm(layer=request.param)


@pytest.fixture(scope="module")
def lm():
    return make_lm()


@nnx.jit
def forward(model, tokens):
    return model(tokens)


def tokens(b=2, length=8, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, length), 0, VOCAB)


def test_lm_parallel_logits_match_step_logits(any_lm):
    lm, x = any_lm, tokens()
    step = nnx.jit(lambda model, token, cache: model.step(token, cache))
    cache = lm.initial_state(2)
    logits = []
    for t in range(x.shape[1]):
        logits_t, cache = step(lm, x[:, t], cache)
        logits.append(logits_t)
    parallel = forward(lm, x)
    assert parallel.shape == (2, 8, VOCAB) and parallel.dtype == jnp.float32
    np.testing.assert_allclose(parallel, jnp.stack(logits, axis=1), rtol=1e-4, atol=1e-4)


def test_lm_greedy_generate_with_cache_equals_recomputing_the_full_sequence(any_lm):
    lm, prompt, new = any_lm, tokens(length=3), 6
    generated = lm.generate(prompt, new, temperature=0)
    assert generated.shape == (2, 3 + new) and generated.dtype == jnp.int32
    # recompute: full parallel forward each step; zeros after t cannot affect causal logits at t
    sequence = jnp.zeros((2, 3 + new), jnp.int32).at[:, :3].set(prompt)
    for t in range(3, 3 + new):
        next_token = jnp.argmax(forward(lm, sequence)[:, t - 1], axis=-1)
        sequence = sequence.at[:, t].set(next_token)
    np.testing.assert_array_equal(generated, sequence)


def test_lm_generate_pads_with_the_stop_token_after_it_appears(lm):
    prompt = tokens(length=3)
    free = np.asarray(lm.generate(prompt, 6, temperature=0))
    stop = int(free[0, 4])  # row 0 emits it at its 2nd new token
    stopped = np.asarray(lm.generate(prompt, 6, temperature=0, stop_token=stop))
    for row in range(2):
        hits = np.flatnonzero(free[row, 3:] == stop)
        end = 3 + (hits[0] + 1 if hits.size else 6)
        np.testing.assert_array_equal(stopped[row, :end], free[row, :end])
        np.testing.assert_array_equal(stopped[row, end:], stop)
    assert (stopped[0, 5:] == stop).all()


def test_top_k_filter_keeps_exactly_the_k_largest():
    logits = jax.random.normal(jax.random.key(0), (4, 10))
    kept = np.isfinite(np.asarray(top_k_filter(logits, 3)))
    expected = np.zeros_like(kept)
    np.put_along_axis(expected, np.argsort(-np.asarray(logits), axis=-1)[:, :3], True, axis=-1)
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(top_k_filter(logits, 10), logits)


def test_top_p_filter_keeps_smallest_set_reaching_p():
    probs = jnp.array([[0.15, 0.5, 0.05, 0.3]])
    logits = jnp.log(probs)
    for p, expected in [
        (0.4, [1]),
        (0.5, [1]),
        (0.6, [1, 3]),
        (0.81, [0, 1, 3]),
        (1.0, [0, 1, 2, 3]),
    ]:
        kept = np.flatnonzero(np.isfinite(np.asarray(top_p_filter(logits, p))[0]))
        np.testing.assert_array_equal(kept, expected, err_msg=f"p={p}")


@pytest.mark.parametrize("p", [0.3, 0.7, 0.95])
def test_top_p_filter_set_is_minimal_on_random_logits(p):
    logits = 2 * jax.random.normal(jax.random.key(1), (8, 20))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    kept = np.isfinite(np.asarray(top_p_filter(logits, p)))
    for row in range(8):
        mass = probs[row, kept[row]].sum()
        smallest_kept = probs[row, kept[row]].min()
        assert mass >= p - 1e-6 and mass - smallest_kept < p
        assert probs[row, ~kept[row]].max(initial=0) <= smallest_kept


def test_lm_sampling_respects_top_k_and_the_key(lm):
    prompt, key = tokens(length=3), jax.random.key(7)
    sampled = lm.generate(prompt, 6, key=key, temperature=50.0, top_k=2)
    np.testing.assert_array_equal(
        sampled, lm.generate(prompt, 6, key=key, temperature=50.0, top_k=2)
    )
    logits = forward(lm, sampled)[:, 2:-1]  # (b, 6, v): the logits each new token was drawn from
    top2 = jnp.argsort(-logits, axis=-1)[..., :2]
    assert bool(jnp.all(jnp.any(top2 == sampled[:, 3:, None], axis=-1)))
    others = [
        lm.generate(prompt, 6, key=jax.random.key(s), temperature=50.0, top_k=2) for s in (8, 9)
    ]
    assert any(not np.array_equal(sampled, other) for other in others)
    # top_k=1 is greedy even at a high temperature
    np.testing.assert_array_equal(
        lm.generate(prompt, 6, key=key, temperature=50.0, top_k=1),
        lm.generate(prompt, 6, temperature=0),
    )


def test_lm_generate_compiles_once_for_new_prompts_and_keys(lm):
    before = _generate._cache_size()
    first = lm.generate(tokens(length=4, seed=1), 5, key=jax.random.key(1), top_p=0.9)
    second = lm.generate(tokens(length=4, seed=2), 5, key=jax.random.key(2), top_p=0.9)
    assert not np.array_equal(first, second)
    assert _generate._cache_size() == before + 1


def test_lm_bf16_keeps_float32_params_and_matches_float32_logits():
    model32, model16 = make_lm(), make_lm("bfloat16")
    params = jax.tree.leaves(nnx.state(model16, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    assert all(isinstance(b.layer.ssm.A_log, SSMParam) for b in model16.blocks)
    x = tokens()
    logits16 = forward(model16, x)
    assert logits16.dtype == jnp.float32
    scale = float(jnp.abs(forward(model32, x)).max())
    np.testing.assert_allclose(logits16, forward(model32, x), atol=0.05 * scale)
    generated = model16.generate(x[:, :3], 4, temperature=0)
    assert generated.shape == (2, 7) and bool(jnp.all((generated >= 0) & (generated < VOCAB)))


def test_lm_save_load_round_trip(lm, tmp_path):
    save_lm(tmp_path / "lm", lm)
    restored = load_lm(tmp_path / "lm")
    assert restored.options() == lm.options()
    x = tokens()
    np.testing.assert_array_equal(forward(restored, x), forward(lm, x))
    with pytest.raises(FileNotFoundError, match="no language model checkpoint"):
        load_lm(tmp_path / "missing")


def test_lm_loads_a_checkpoint_of_the_former_mamba_lm(lm, tmp_path):
    # MambaLM wrote {embedding, norms, layers, final_norm} and options without layer/output.
    folder = tmp_path / "mamba_lm"
    folder.mkdir()
    options = {k: v for k, v in lm.options().items() if k not in ("layer", "output")}
    (folder / OPTIONS_FILE).write_text(json.dumps(options))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(folder / PARAMS_DIR, _mamba_lm_layout(nnx.to_pure_dict(nnx.state(lm))))
    restored = load_lm(folder)
    assert restored.options() == lm.options()
    x = tokens()
    np.testing.assert_array_equal(forward(restored, x), forward(lm, x))


def test_lm_prefills_the_prompt_in_one_parallel_call_then_decodes_with_step(any_lm):
    # The only loops in the compiled generate are the decoding scan and scans inside ops
    # (none here: associative scan, FFT conv): no loop over the prompt's 7 tokens.
    lm = any_lm
    if lm.layer == "mamba":
        lm = make_lm(layer="mamba")
        for block in lm.blocks:
            block.layer.ssm.impl = "associative"
    graphdef, state = nnx.split(lm)
    jaxpr = jax.make_jaxpr(
        lambda state, prompt: _generate.__wrapped__(
            graphdef,
            state,
            prompt,
            jax.random.key(0),
            max_new_tokens=5,
            temperature=0.0,
            top_k=None,
            top_p=None,
            stop_token=None,
        )
    )(state, tokens(length=7))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert [e.params["length"] for e in scans] == [5]
    layer_calls = []
    original = type(lm.blocks[0].layer).__call__

    def spy(layer, x, *args, **kwargs):
        layer_calls.append(x.shape)
        return original(layer, x, *args, **kwargs)

    type(lm.blocks[0].layer).__call__ = spy
    try:
        lm.generate(tokens(length=7), 5, temperature=0)
    finally:
        type(lm.blocks[0].layer).__call__ = original
    assert layer_calls == [(2, 7, 16)] * lm.n_layers  # one parallel call per layer


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lm: lm.generate(tokens(), 3, temperature=1.0), "needs a PRNG key"),
        (lambda lm: lm.generate(tokens()[:, :0], 3, temperature=0), "l0 >= 1"),
        (lambda lm: lm.generate(tokens(), 3, temperature=0, top_k=0), "top_k must be in"),
        (lambda lm: lm.generate(tokens(), 3, temperature=0, top_p=1.5), "top_p must be in"),
        (
            lambda lm: LanguageModel(
                **{**OPTIONS, "layer_options": {"bidirectional": True}}, rngs=nnx.Rngs(0)
            ),
            "LanguageModel is causal",
        ),
    ],
)
def test_lm_rejects_bad_arguments(lm, call, message):
    with pytest.raises(ValueError, match=message):
        call(lm)


def test_lm_mamba2_greedy_generate_with_cache_equals_recomputing_the_full_sequence():
    options = {**OPTIONS, "layer": "mamba2", "layer_options": dict(d_state=4, headdim=8)}
    lm = LanguageModel(**options, rngs=nnx.Rngs(0))
    lm.embedding.embedding[...] = lm.embedding.embedding[...] * 50  # as make_lm: no rounding ties
    prompt, new = tokens(length=3), 6
    generated = lm.generate(prompt, new, temperature=0)
    assert generated.shape == (2, 3 + new)
    sequence = jnp.zeros((2, 3 + new), jnp.int32).at[:, :3].set(prompt)
    for t in range(3, 3 + new):
        next_token = jnp.argmax(forward(lm, sequence)[:, t - 1], axis=-1)
        sequence = sequence.at[:, t].set(next_token)
    np.testing.assert_array_equal(generated, sequence)
    assert len(np.unique(np.asarray(generated[:, 3:]))) > 1  # not a constant continuation
