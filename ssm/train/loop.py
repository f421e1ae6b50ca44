"""The training loop as a library: ``train(config)`` runs, evaluates, checkpoints and resumes."""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from ssm.config import ConfigError, options_of
from ssm.data import Loader, get_dataset
from ssm.models import SequenceModel, generate
from ssm.train.checkpoint import Checkpoints
from ssm.train.config import ExperimentConfig, run_config
from ssm.train.metrics import MetricsWriter
from ssm.train.objectives import (
    LANGUAGE_MODELLING,
    causal_lm_targets,
    language_model_metrics,
    masked_lm_targets,
    unigram_bits,
)
from ssm.train.optim import make_optimizer, param_labels

MASK_KEY = 0x6D61736B  # folded into a step's key for masked_lm's masking (dropout keeps its own)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


def build_model(config: ExperimentConfig, spec, seed: int) -> SequenceModel:
    """The SequenceModel a config describes, for a dataset with the given spec.

    Under a language-model objective the head predicts tokens (``num_classes`` = the vocabulary)
    at every position; masked_lm's inputs have one more token, the mask.
    """
    objective = config.trainer.objective
    num_classes, vocab_size = spec.num_classes, spec.vocab_size
    if objective in LANGUAGE_MODELLING:
        if spec.vocab_size is None or spec.paired:
            raise ConfigError(
                f"trainer.objective={objective} needs a dataset of single token sequences; "
                f"dataset {spec.name!r} has {'pairs' if spec.paired else 'real-valued inputs'}"
            )
        if config.model.pooling != "none":
            raise ConfigError(
                f"trainer.objective={objective} predicts every position: set model.pooling=none "
                f"(got {config.model.pooling!r})"
            )
        num_classes, vocab_size = spec.vocab_size, spec.vocab_size + (objective == "masked_lm")
    model = SequenceModel(
        num_classes=num_classes,
        d_input=spec.d_input,
        vocab_size=vocab_size,
        paired=spec.paired,
        layer=config.layer_name,
        layer_options=options_of(config.layer),
        **options_of(config.model),
        rngs=nnx.Rngs(params=seed),
    )
    if objective == "causal_lm" and any(
        getattr(block.layer, "bidirectional", False) for block in model.blocks
    ):
        raise ConfigError(
            "trainer.objective=causal_lm needs a causal layer: set layer.bidirectional=false"
        )
    return model


def loss_and_metrics(logits, labels, mask, weights):
    """Mean cross-entropy and accuracy over examples (or valid positions) with weight > 0.

    logits: (b, k) with labels (b,), or (b, l, k) with labels (b, l) counted where ``mask``.
    weights: (b,) 1 for real examples, 0 for batch padding.
    """
    if logits.ndim == 3:
        weights = weights[:, None] * mask
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = jnp.argmax(logits, -1) == labels
    total = jnp.sum(weights)
    return jnp.sum(losses * weights) / jnp.maximum(total, 1.0), {
        "loss_sum": jnp.sum(losses * weights),
        "correct": jnp.sum(correct * weights),
        "count": total,
    }


def scored(batch: dict):
    """Positions that count in a per-position loss: ``label_mask`` if given, else ``mask``."""
    return batch.get("label_mask", batch["mask"])


def zero_window() -> dict:
    """Running sums of the training metrics since the last log line. They are part of the train
    state, so a resumed run logs exactly what an uninterrupted one would."""
    return {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}


def pad_batch(batch: dict, size: int) -> dict:
    """Pad a short eval batch to ``size`` examples (weight 0) so one compiled step serves all."""
    n = batch["inputs"].shape[0]
    out = {
        k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }
    out["weight"] = (np.arange(size) < n).astype(np.float32)
    return out


class Trainer:
    """Owns the model definition, the optimizer and the jitted steps of one experiment."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        tc = config.trainer
        self.dataset = get_dataset(config.dataset_name, **options_of(config.dataset))
        spec = self.dataset.spec
        self.language_model = tc.objective in LANGUAGE_MODELLING
        if not self.language_model and "label" not in self.dataset.source("train")[0]:
            raise ConfigError(
                f"dataset {spec.name!r} has no labels to classify; "
                "use trainer.objective=causal_lm or masked_lm"
            )
        if not 0.0 < tc.mask_rate < 1.0:
            raise ConfigError(f"trainer.mask_rate must be in (0, 1), got {tc.mask_rate}")
        # Every batch is padded to the dataset's length: one compiled step for all of them.
        self.train_loader = Loader(
            self.dataset.source("train"), tc.batch_size, seed=tc.seed, pad_to=spec.seq_len
        )
        self.eval_batch_size = tc.eval_batch_size or tc.batch_size
        steps_per_epoch = self.train_loader.steps_per_epoch
        if steps_per_epoch == 0:
            raise ValueError(
                f"trainer.batch_size={tc.batch_size} is larger than the training split "
                f"({len(self.dataset.source('train'))} examples)"
            )
        self.total_steps = tc.max_steps if tc.max_steps is not None else tc.epochs * steps_per_epoch
        model = build_model(config, spec, tc.seed)
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.tx = make_optimizer(
            config.optimizer, config.scheduler, self.total_steps, param_labels(params)
        )
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        if tc.init_from is not None:
            params = backbone_from(tc.init_from, params)
        self.initial_state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "rest": rest,
            "opt_state": self.tx.init(params),
            "key": jax.random.key_data(jax.random.key(tc.seed)),
            "window": zero_window(),
        }
        self.train_step = jax.jit(self._train_step, donate_argnums=0)
        self.eval_step = jax.jit(self._eval_step)

    def _targets(self, batch, key):
        """(model inputs, per-example or per-position labels, scored positions) of a batch."""
        tc = self.config.trainer
        if tc.objective == "causal_lm":
            return causal_lm_targets(batch["inputs"], batch["mask"], batch.get("segment_ids"))
        if tc.objective == "masked_lm":
            return masked_lm_targets(
                jax.random.fold_in(key, MASK_KEY),
                batch["inputs"],
                batch["mask"],
                rate=tc.mask_rate,
                mask_token=self.dataset.spec.vocab_size,
            )
        return batch["inputs"], batch["label"], scored(batch)

    def _apply(self, params, rest, inputs, mask, *, train, key=None):
        model = nnx.merge(self.graphdef, params, rest)
        logits = model(inputs, mask, train=train, key=key)
        return logits, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    def _train_step(self, state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        weights = jnp.ones(batch["inputs"].shape[:1], jnp.float32)
        inputs, labels, positions = self._targets(batch, key)

        def loss_fn(params):
            logits, rest = self._apply(
                params, state["rest"], inputs, batch["mask"], train=True, key=key
            )
            loss, stats = loss_and_metrics(logits, labels, positions, weights)
            return loss, (rest, stats)

        (loss, (rest, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        window = jax.tree.map(jnp.add, state["window"], stats)
        new_state = dict(
            state,
            step=state["step"] + 1,
            params=params,
            rest=rest,
            opt_state=opt_state,
            window=window,
        )
        return new_state, stats

    def _eval_step(self, params, rest, batch, key):
        inputs, labels, positions = self._targets(batch, key)
        logits, _ = self._apply(params, rest, inputs, batch["mask"], train=False)
        return loss_and_metrics(logits, labels, positions, batch["weight"])[1]

    def summary(self, sums: dict, prefix: str) -> dict[str, float]:
        """Mean loss and accuracy (and perplexity, bits per token/byte for language models) of
        summed ``loss_sum``, ``correct``, ``count``, keyed ``{prefix}/{metric}``."""
        count = max(float(sums["count"]), 1.0)
        means = {"loss": float(sums["loss_sum"]) / count}
        means["accuracy"] = float(sums["correct"]) / count
        if self.language_model:
            means.update(language_model_metrics(means["loss"], self.dataset.spec.byte_level))
        return {f"{prefix}/{k}": v for k, v in means.items()}

    def unigram_baseline(self, split: str = "validation", limit: int = 20_000) -> dict:
        """Bits per token of ``split`` under the training split's unigram distribution (over
        each source's ``stream()`` if it has one, else the first ``limit`` examples)."""
        spec = self.dataset.spec
        train, other = (token_stream(self.dataset.source(s), limit) for s in ("train", split))
        name = "bpb" if spec.byte_level else "bits_per_token"
        return {f"unigram/{name}": unigram_bits(train, other, spec.vocab_size)}

    def samples(self, state, step: int, length: int, prompt_length: int = 32) -> dict:
        """A greedy and a sampled (temperature 1) continuation of the first validation example's
        first ``prompt_length`` tokens: ``{"step", "prompt", "greedy", "sampled"}``, as text for
        byte-level data, else token lists."""
        example = self.dataset.source("validation")[0]
        valid = np.asarray(example["inputs"])[: int(example.get("length", prompt_length))]
        prompt = jnp.asarray(valid[None, :prompt_length], jnp.int32)
        model = nnx.merge(self.graphdef, state["params"], state["rest"])
        key = jax.random.fold_in(jax.random.key(self.config.trainer.seed), step)
        out = {"step": step}
        for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
            tokens = generate(
                model,
                prompt,
                length,
                vocab_size=self.dataset.spec.vocab_size,
                key=key,
                temperature=temperature,
            )
            out[name] = np.asarray(tokens[0, prompt.shape[1] :]).tolist()
        out["prompt"] = np.asarray(prompt[0]).tolist()
        if self.dataset.spec.byte_level:
            for name in ("prompt", "greedy", "sampled"):
                out[name] = bytes(out[name]).decode(errors="replace")
        return out

    def evaluate(self, state, split: str) -> dict[str, float]:
        """Loss and accuracy of ``state`` on a whole split (masked_lm masks with fixed keys)."""
        loader = Loader(
            self.dataset.source(split),
            self.eval_batch_size,
            seed=0,
            shuffle=False,
            drop_remainder=False,
            pad_to=self.dataset.spec.seq_len,
        )
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        base = jax.random.key(self.config.trainer.seed + 1)
        for index, batch in enumerate(loader.batches(0)):
            stats = self.eval_step(
                state["params"],
                state["rest"],
                pad_batch(batch, self.eval_batch_size),
                jax.random.fold_in(base, index),
            )
            for k in totals:
                totals[k] += float(stats[k])
        return self.summary(totals, split)


def write_sample(output_dir: Path, sample: dict):
    """Append ``sample`` to ``samples.jsonl`` (flushed) and print it."""
    with open(output_dir / "samples.jsonl", "a") as f:
        f.write(json.dumps(sample) + "\n")
    for name in ("greedy", "sampled"):
        print(f"step {sample['step']} {name}: {sample['prompt']!r} -> {sample[name]!r}", flush=True)


def token_stream(source, limit: int) -> np.ndarray:
    """A source's tokens as one 1-D array: its ``stream()``, else the valid ``inputs`` of its
    first ``limit`` examples concatenated."""
    if hasattr(source, "stream"):
        return np.asarray(source.stream())
    parts = []
    for i in range(min(len(source), limit)):
        example = source[i]
        inputs = np.asarray(example["inputs"])
        parts.append(inputs[: int(example.get("length", len(inputs)))])
    return np.concatenate(parts)


def _leaves(tree, prefix=()):
    """(path, leaf) of a nested dict, in order."""
    if not isinstance(tree, dict):
        yield prefix, tree
        return
    for key, value in tree.items():
        yield from _leaves(value, (*prefix, key))


def backbone_from(run_dir, params: dict) -> dict:
    """``params`` with every leaf but the head's replaced by the same leaf of the run in
    ``run_dir`` (its best checkpoint, else its latest).

    A masked_lm run's embedding has one more row (the mask token); that row is dropped. Raises
    ConfigError naming the first leaf whose shape differs or that the run lacks.
    """
    checkpoints = Checkpoints(Path(run_dir) / "checkpoints")
    try:
        restored = checkpoints.restore_best() or checkpoints.restore_latest()
    finally:
        checkpoints.close()
    if restored is None:
        raise ConfigError(f"trainer.init_from={run_dir} has no checkpoint")
    source = restored[1]["params"]
    out = jax.tree.map(lambda x: x, params)
    for path, leaf in _leaves(params):
        if path[0] == "head":
            continue
        node = source
        for key in path:
            node = node.get(str(key), node.get(key)) if isinstance(node, dict) else None
        where = ".".join(map(str, path))
        if node is None:
            raise ConfigError(f"trainer.init_from={run_dir} has no parameter {where}")
        node = np.asarray(node)
        if path[0] == "encoder" and node.ndim == 2 and node.shape[0] == leaf.shape[0] + 1:
            node = node[:-1]  # a masked_lm run's mask-token row
        if node.shape != leaf.shape:
            raise ConfigError(
                f"trainer.init_from={run_dir}: parameter {where} has shape {node.shape} there, "
                f"{tuple(leaf.shape)} here"
            )
        target = out
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = jnp.asarray(node, leaf.dtype)
    return out


def check_finite(loss: float, step: int, checkpoints: Checkpoints):
    """Raise TrainingDiverged naming the last good checkpoint if ``loss`` is NaN or infinite."""
    if np.isfinite(loss):
        return
    last = checkpoints.latest.latest_step()
    kept = "no checkpoint yet" if last is None else f"last good checkpoint: step {last}"
    raise TrainingDiverged(
        f"loss became {loss} at step {step}; stopped ({kept} in {checkpoints.directory})"
    )


def train(config: ExperimentConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Train, evaluating every epoch; return the final metrics (test at the best validation).

    With ``trainer.resume`` the run continues from the latest checkpoint in ``output_dir``
    exactly: same step, data order, dropout keys and logged metrics. ``on_step(step)`` is called
    after each step.
    """
    tc = config.trainer
    out = Path(tc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    trainer = Trainer(config)
    best = ("validation/loss", "min") if trainer.language_model else ("validation/accuracy", "max")
    checkpoints = Checkpoints(out / "checkpoints", *best)
    baseline = trainer.unigram_baseline() if tc.objective == "causal_lm" else {}
    if baseline:
        unit = "byte" if trainer.dataset.spec.byte_level else "token"
        print(f"unigram baseline: {next(iter(baseline.values())):.4f} bits per {unit}", flush=True)
    state = trainer.initial_state
    restored = checkpoints.restore_latest(state) if tc.resume else None
    if restored is not None:
        state = restored[1]
        print(f"resumed from step {restored[0]} in {checkpoints.directory}", flush=True)
    step = int(state["step"])
    total, per_epoch = trainer.total_steps, trainer.train_loader.steps_per_epoch
    metrics = MetricsWriter(
        out, tensorboard=tc.tensorboard, resume_step=step if tc.resume else None
    )
    bar = tqdm(total=total, initial=step, disable=not tc.progress, desc="train")
    last_validation = (None, {})  # (step, metrics) of the latest validation
    try:
        while step < total:
            epoch, start = divmod(step, per_epoch)
            for batch in trainer.train_loader.batches(epoch, start):
                state, stats = trainer.train_step(state, batch)
                step += 1
                loss = float(stats["loss_sum"] / max(float(stats["count"]), 1.0))
                check_finite(loss, step, checkpoints)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if step % tc.log_every == 0 or step == total:
                    window = jax.device_get(state["window"])
                    metrics.write(step, trainer.summary(window, "train"), echo=not tc.progress)
                    state = dict(state, window=zero_window())
                if tc.objective == "causal_lm" and tc.sample_every and step % tc.sample_every == 0:
                    write_sample(out, trainer.samples(state, step, tc.sample_length))
                if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                    checkpoints.save_latest(step, state)
                if on_step is not None:
                    on_step(step)
                if step % (tc.eval_every or per_epoch) == 0 or step == total:
                    val = trainer.evaluate(state, "validation")
                    last_validation = (step, val)
                    metrics.write(step, {"epoch": step / per_epoch, **val})
                    checkpoints.save_if_best(step, state, val)
                    checkpoints.save_latest(step, state)
                if step == total:
                    break
        best_step, best_state = checkpoints.restore_best(state) or (step, state)
        results = {"step": step, "best_step": best_step, **baseline}
        if last_validation[0] == best_step:  # the best is the state just evaluated
            results.update(last_validation[1])
        else:
            results.update(trainer.evaluate(best_state, "validation"))
        results.update(trainer.evaluate(best_state, "test"))
        metrics.write(step, {k: v for k, v in results.items() if "/" in k}, echo=False)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        return results
    finally:
        bar.close()
        metrics.close()
        checkpoints.close()


def restore_run(output_dir, checkpoint: str = "best", **dataset_overrides):
    """(Trainer, step, state) of a trained run's ``best`` or ``latest`` checkpoint.

    ``dataset_overrides`` change the saved dataset options (see ``evaluate_run``).
    """
    if checkpoint not in ("best", "latest"):
        raise ConfigError(f"checkpoint={checkpoint!r} is not valid; valid: 'best', 'latest'")
    trainer = Trainer(run_config(output_dir, **dataset_overrides))
    checkpoints = Checkpoints(Path(output_dir) / "checkpoints")
    try:
        restore = checkpoints.restore_best if checkpoint == "best" else checkpoints.restore_latest
        restored = restore(trainer.initial_state)
    finally:
        checkpoints.close()
    if restored is None:
        raise ConfigError(f"run={output_dir} has no {checkpoint} checkpoint")
    return trainer, *restored


def load_model(output_dir, checkpoint: str = "best"):
    """(model, dataset spec) of a trained run: the SequenceModel with the checkpoint's weights."""
    trainer, _, state = restore_run(output_dir, checkpoint)
    return nnx.merge(trainer.graphdef, state["params"], state["rest"]), trainer.dataset.spec


def evaluate_run(output_dir, split: str = "test", checkpoint: str = "best", **dataset_overrides):
    """Loss and accuracy on ``split`` of a trained run's ``best`` or ``latest`` checkpoint.

    ``dataset_overrides`` change the saved dataset options, e.g. ``eval_seq_len=4096`` to test
    length generalization. Returns the checkpoint's step and ``{split}/loss``, ``{split}/accuracy``.
    """
    trainer, step, state = restore_run(output_dir, checkpoint, **dataset_overrides)
    splits = trainer.dataset.spec.splits
    if split not in splits:
        raise ConfigError(f"split={split!r} is not valid; valid: {', '.join(splits)}")
    return {"step": step, **trainer.evaluate(state, split)}
