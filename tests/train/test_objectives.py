import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.config import ConfigError
from ssm.data import DATASETS, Dataset, DatasetSpec
from ssm.models import LanguageModel, SequenceModel
from ssm.train import Trainer, experiment_config, train
from ssm.train.checkpoint import Checkpoints
from ssm.train.loop import loss_and_metrics
from ssm.train.objectives import (
    causal_lm_targets,
    language_model_metrics,
    masked_lm_targets,
    unigram_bits,
)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_causal_lm_targets_are_the_next_valid_token():
    tokens = jnp.array([[5, 6, 7, 0], [1, 2, 3, 4]])
    mask = jnp.array([[True, True, True, False], [True] * 4])
    inputs, labels, scored = causal_lm_targets(tokens, mask)
    np.testing.assert_array_equal(inputs, tokens)
    np.testing.assert_array_equal(labels, [[6, 7, 0, 0], [2, 3, 4, 0]])
    np.testing.assert_array_equal(scored, [[1, 1, 0, 0], [1, 1, 1, 0]])


def test_causal_lm_loss_equals_the_hand_computed_mean_over_scored_positions():
    tokens = jnp.array([[1, 0, 2, 0]])
    mask = jnp.array([[True, True, True, False]])
    logits = jax.random.normal(jax.random.key(0), (1, 4, 3))
    _, labels, scored = causal_lm_targets(tokens, mask)
    loss, stats = loss_and_metrics(logits, labels, scored, jnp.ones(1))
    lp = log_softmax(logits[0])
    expected = -(lp[0, 0] + lp[1, 2]) / 2  # 1 -> 0 and 0 -> 2; position 2's next is padding
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(stats["count"]) == 2


def test_padded_and_unscored_positions_never_contribute():
    tokens = jnp.array([[3, 1, 2, 0, 0]])
    mask = jnp.array([[True, True, True, False, False]])
    logits = jax.random.normal(jax.random.key(1), (1, 5, 4))
    _, labels, scored = causal_lm_targets(tokens, mask)
    changed = logits.at[:, 2:].set(100.0 * jax.random.normal(jax.random.key(2), (1, 3, 4)))
    other_padding = tokens.at[:, 3:].set(3)
    _, labels2, scored2 = causal_lm_targets(other_padding, mask)
    a = loss_and_metrics(logits, labels, scored, jnp.ones(1))[0]
    b = loss_and_metrics(changed, labels2, scored2, jnp.ones(1))[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_packed_rows_score_the_same_positions_as_the_sequences_apart():
    first, second = [4, 1, 3], [2, 2, 5, 1]
    packed = jnp.array([first + second])
    segments = jnp.array([[0] * 3 + [1] * 4])
    logits = jax.random.normal(jax.random.key(3), (1, 7, 6))
    _, labels, scored = causal_lm_targets(packed, jnp.ones((1, 7), bool), segments)
    packed_loss, packed_stats = loss_and_metrics(logits, labels, scored, jnp.ones(1))
    sums, counts = 0.0, 0.0
    for part, rows in ((first, slice(0, 3)), (second, slice(3, 7))):
        tokens = jnp.array([part])
        _, lab, sc = causal_lm_targets(tokens, jnp.ones_like(tokens, bool))
        _, stats = loss_and_metrics(logits[:, rows], lab, sc, jnp.ones(1))
        sums, counts = sums + float(stats["loss_sum"]), counts + float(stats["count"])
    assert float(packed_stats["count"]) == counts == 5  # no target across the boundary
    np.testing.assert_allclose(packed_loss, sums / counts, rtol=1e-6)


# Two packed rows of two sequences of 6 tokens; SequenceModel's second sequence of row 1 is padding.
PACKED_PIECES = [(0, 0, 6), (0, 6, 12), (1, 0, 6), (1, 6, 12)]
PACKED_MODELS = {
    "lm-mamba": (LanguageModel, "mamba"),
    "sequence-mamba": (SequenceModel, "mamba"),
    "sequence-lru": (SequenceModel, "lru"),
}


def packed_model(kind):
    cls, layer = PACKED_MODELS[kind]
    options = dict(layer=layer, layer_options=dict(d_state=4), rngs=nnx.Rngs(0))
    if cls is LanguageModel:
        return LanguageModel(8, 16, 1, **options)
    return SequenceModel(
        num_classes=8, vocab_size=8, d_model=16, n_layers=1, dropout=0.0, pooling="none", **options
    )


@nnx.jit
def causal_lm_sums(model, tokens, mask, segment_ids):
    """(summed loss, count) of causal_lm over a batch, and the gradient of the summed loss."""

    def loss_sum(model):
        if isinstance(model, LanguageModel):
            logits = model(tokens, segment_ids=segment_ids)
        else:
            logits = model(tokens, mask, segment_ids=segment_ids)
        _, labels, scored = causal_lm_targets(tokens, mask, segment_ids)
        stats = loss_and_metrics(logits, labels, scored, jnp.ones(tokens.shape[:1]))[1]
        return stats["loss_sum"], stats["count"]

    (total, count), grads = nnx.value_and_grad(loss_sum, has_aux=True)(model)
    return total, count, grads


@pytest.mark.parametrize("kind", PACKED_MODELS)
def test_packed_rows_give_the_loss_and_gradients_of_the_sequences_run_apart(kind):
    model = packed_model(kind)
    padded = PACKED_MODELS[kind][0] is SequenceModel  # the LM has no mask: its rows are full
    tokens = jax.random.randint(jax.random.key(9), (2, 12), 0, 8)
    segment_ids, mask = np.zeros((2, 12), np.int32), np.ones((2, 12), bool)
    for i, (row, start, stop) in enumerate(PACKED_PIECES):
        segment_ids[row, start:stop] = i
    mask[1, 6:] = not padded
    total, count, grads = causal_lm_sums(model, tokens, jnp.asarray(mask), jnp.asarray(segment_ids))
    apart = jnp.stack([tokens[r, a:b] for r, a, b in PACKED_PIECES if mask[r, a]])
    apart_total, apart_count, apart_grads = causal_lm_sums(
        model, apart, jnp.ones(apart.shape, bool), None
    )
    assert float(count) == float(apart_count) == 5 * len(apart)  # no target across sequences
    np.testing.assert_allclose(total, apart_total, rtol=1e-5)
    for g, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(apart_grads), strict=True):
        np.testing.assert_allclose(g, expected, atol=1e-4 * float(jnp.max(jnp.abs(expected))))


def test_masked_lm_masks_only_valid_tokens_at_the_rate_and_scores_only_them():
    tokens = jax.random.randint(jax.random.key(4), (64, 128), 0, 10)
    mask = jnp.arange(128)[None] < jax.random.randint(jax.random.key(5), (64, 1), 1, 129)
    inputs, labels, scored = masked_lm_targets(
        jax.random.key(6), tokens, mask, rate=0.25, mask_token=10
    )
    np.testing.assert_array_equal(labels, tokens)
    assert not np.any(scored & ~mask)
    np.testing.assert_array_equal(inputs == 10, scored)
    np.testing.assert_array_equal(np.where(scored, tokens, inputs), tokens)
    rate = float(scored.sum() / mask.sum())
    assert abs(rate - 0.25) < 0.02, rate


def test_masked_lm_loss_is_the_hand_computed_mean_over_masked_positions():
    tokens = jnp.array([[1, 2, 0, 1, 2, 0]])
    mask = jnp.ones((1, 6), bool)
    inputs, labels, scored = masked_lm_targets(
        jax.random.key(7), tokens, mask, rate=0.5, mask_token=3
    )
    logits = jax.random.normal(jax.random.key(8), (1, 6, 4))
    loss, _ = loss_and_metrics(logits, labels, scored, jnp.ones(1))
    lp = log_softmax(logits[0])
    chosen = np.flatnonzero(np.asarray(scored[0]))
    assert 0 < len(chosen) < 6
    expected = -np.mean([lp[i, int(tokens[0, i])] for i in chosen])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_no_scored_position_gives_zero_loss_not_nan():
    logits = jnp.zeros((1, 3, 2))
    loss, _ = loss_and_metrics(logits, jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3)), jnp.ones(1))
    assert float(loss) == 0.0


def test_bits_and_perplexity_and_the_unigram_baseline():
    metrics = language_model_metrics(math.log(4.0), byte_level=True)
    np.testing.assert_allclose(metrics["bpb"], 2.0)
    np.testing.assert_allclose(metrics["perplexity"], 4.0)
    assert "bits_per_token" in language_model_metrics(1.0, byte_level=False)
    # counts + 1 = [3, 2, 1]: p(1) = 2/6, p(2) = 1/6
    bits = unigram_bits(np.array([0, 0, 1]), np.array([1, 2]), 3)
    np.testing.assert_allclose(bits, -(np.log2(2 / 6) + np.log2(1 / 6)) / 2)


class CountingTokens:
    """Label-free token rows: a start token in 1..7, then counting up mod 8, 6..24 long."""

    def __init__(self, count, seed):
        rng = np.random.default_rng(seed)
        self.examples = []
        for _ in range(count):
            start, length = rng.integers(1, 8), rng.integers(6, 25)
            tokens = ((start + np.arange(length)) % 8).astype(np.int32)
            self.examples.append({"inputs": tokens, "length": int(length)})

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def counting_tokens():
    spec = DatasetSpec("counting_tokens", seq_len=24, num_classes=8, vocab_size=8)
    splits = {"train": (64, 0), "validation": (16, 1), "test": (16, 2)}
    return Dataset(spec, {k: CountingTokens(*v) for k, v in splits.items()})


if "counting_tokens" not in DATASETS:
    DATASETS.register("counting_tokens")(counting_tokens)


def lm_config(output_dir, objective="causal_lm", dataset="counting_tokens", **overrides):
    raw = {
        "layer": {"name": "s4d", "d_state": 8, **overrides.pop("layer", {})},
        "dataset": {"name": dataset},
        "model": {"d_model": 16, "n_layers": 1, "dropout": 0.0, "pooling": "none"},
        "optimizer": {"lr": 1e-2},
        "trainer": {
            "objective": objective,
            "batch_size": 16,
            "max_steps": 40,
            "output_dir": str(output_dir),
            "progress": False,
            "tensorboard": False,
        },
    }
    for group, values in overrides.items():
        raw[group] = {**raw[group], **values}
    return experiment_config(raw)


def test_causal_lm_run_learns_the_pattern_beats_the_unigram_baseline_and_keeps_lowest_loss(
    tmp_path,
):
    results = train(lm_config(tmp_path, trainer={"sample_every": 20, "sample_length": 6}))
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [20, 40]
    first = CountingTokens(16, 1)[0]["inputs"]
    for sample in samples:
        assert sample["prompt"] == first[:24].tolist()  # the whole (short) validation example
        assert len(sample["greedy"]) == len(sample["sampled"]) == 6
    assert all(0 <= t < 8 for t in samples[-1]["greedy"] + samples[-1]["sampled"])
    assert results["unigram/bits_per_token"] == pytest.approx(3.0, abs=0.1)  # ~uniform over 8
    assert results["test/bits_per_token"] < 0.5 * results["unigram/bits_per_token"]
    np.testing.assert_allclose(
        results["test/perplexity"], 2 ** results["test/bits_per_token"], rtol=1e-6
    )
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    kept = checkpoints.best.metrics(checkpoints.best.best_step())
    checkpoints.close()
    assert kept["validation/loss"] == results["validation/loss"]


def test_masked_lm_run_trains_a_bidirectional_layer(tmp_path):
    config = lm_config(tmp_path, "masked_lm", layer={"bidirectional": True})
    trainer = Trainer(config)
    assert trainer.initial_state["params"]["encoder"]["embedding"].shape == (9, 16)  # + mask
    results = train(config)
    assert np.isfinite(results["test/loss"]) and "test/bits_per_token" in results


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(layer={"bidirectional": True}), "needs a causal layer"),
        (dict(model={"pooling": "mean"}), "model.pooling=none"),
        (dict(dataset="digits"), "single token sequences"),
        (dict(trainer={"mask_rate": 1.5}), "mask_rate"),
    ],
)
def test_language_model_objectives_refuse_what_they_cannot_train(tmp_path, overrides, message):
    overrides = dict(overrides)
    dataset = overrides.pop("dataset", "counting_tokens")
    with pytest.raises(ConfigError, match=message):
        Trainer(lm_config(tmp_path, dataset=dataset, **overrides))


def test_classify_refuses_a_dataset_without_labels(tmp_path):
    with pytest.raises(ConfigError, match="no labels to classify"):
        Trainer(lm_config(tmp_path, "classify"))


def packed_bytes_config(tmp_path, layer):
    """causal_lm for 2 steps on 8 files of 10 bytes as packed windows of 16 bytes."""
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for i in range(8):
        (corpus / f"{i}.txt").write_text(f"file {i}: ab"[:9])
    raw = {
        "layer": layer,
        "dataset": {
            "name": "bytes",
            "path": str(corpus),
            "seq_len": 16,
            "packed": True,
            "data_dir": str(tmp_path / "data"),
        },
        "model": {"d_model": 8, "n_layers": 1, "dropout": 0.0, "pooling": "none"},
        "trainer": {
            "objective": "causal_lm",
            "batch_size": 2,
            "max_steps": 2,
            "output_dir": str(tmp_path / "run"),
            "progress": False,
            "tensorboard": False,
        },
    }
    return experiment_config(raw)


def test_causal_lm_trains_on_packed_byte_windows_and_refuses_a_layer_without_segment_ids(
    tmp_path, monkeypatch
):
    calls, call = [], SequenceModel.__call__

    def spy(self, *args, segment_ids=None, **kwargs):  # the segment_ids of each traced call
        calls.append(None if segment_ids is None else segment_ids.shape)
        return call(self, *args, segment_ids=segment_ids, **kwargs)

    monkeypatch.setattr(SequenceModel, "__call__", spy)
    results = train(packed_bytes_config(tmp_path, {"name": "mamba", "d_state": 4}))
    assert calls and set(calls) == {(2, 16)}  # the train step and the eval step
    assert np.isfinite(results["test/loss"]) and np.isfinite(results["validation/loss"])
    with pytest.raises(ConfigError, match=r"packed rows .* layer=s4d .* valid: lru, mamba"):
        Trainer(packed_bytes_config(tmp_path, {"name": "s4d", "d_state": 8}))


def _leaves(tree, prefix=()):
    if not isinstance(tree, dict):
        return {prefix: np.asarray(tree)}
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, (*prefix, str(key))))
    return out


@pytest.mark.parametrize("objective", ["causal_lm", "masked_lm"])
def test_init_from_loads_exactly_the_backbone_and_a_new_head(tmp_path, objective):
    train(lm_config(tmp_path / "pretrain", objective, trainer={"max_steps": 5}))
    checkpoints = Checkpoints(tmp_path / "pretrain" / "checkpoints")
    source = _leaves(checkpoints.restore_best()[1]["params"])
    checkpoints.close()
    finetune = lm_config(tmp_path / "finetune", trainer={"init_from": str(tmp_path / "pretrain")})
    scratch = _leaves(Trainer(lm_config(tmp_path / "scratch")).initial_state["params"])
    loaded = _leaves(Trainer(finetune).initial_state["params"])
    assert loaded.keys() == scratch.keys()
    backbone = [path for path in loaded if path[0] != "head"]
    assert len(backbone) > 5
    for path in backbone:
        expected = source[path][:-1] if loaded[path].shape != source[path].shape else source[path]
        np.testing.assert_array_equal(loaded[path], expected, err_msg=str(path))
    for path in loaded.keys() - set(backbone):  # the head is the fresh one
        np.testing.assert_array_equal(loaded[path], scratch[path])


def test_init_from_refuses_a_mismatched_model_naming_the_first_differing_shape(tmp_path):
    train(lm_config(tmp_path / "pretrain", trainer={"max_steps": 2}))
    wider = lm_config(
        tmp_path / "wider",
        model={"d_model": 32},
        trainer={"init_from": str(tmp_path / "pretrain")},
    )
    with pytest.raises(ConfigError) as error:
        Trainer(wider)
    message = str(error.value)
    assert "\n" not in message
    assert message.endswith("parameter blocks.0.layer.A_imag has shape (16, 4) there, (32, 4) here")
    with pytest.raises(ConfigError, match="has no checkpoint"):
        Trainer(lm_config(tmp_path / "x", trainer={"init_from": str(tmp_path / "missing")}))
