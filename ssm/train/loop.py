"""The training loop as a library: ``train(config)`` runs, evaluates, checkpoints and resumes."""

import dataclasses
import functools
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from ssm.config import ConfigError, from_mapping, options_of
from ssm.data import Loader, get_dataset
from ssm.data.registry import dataset_options_class
from ssm.layers.base import packing_layers
from ssm.models import SequenceModel, generate
from ssm.train.checkpoint import Checkpoints, all_finite
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
from ssm.train.parallel import (
    batch_sharding,
    check_batch,
    global_batch,
    host_shard,
    initialize,
    make_mesh,
    replicated,
    state_shardings,
)
from ssm.train.run_dir import Preempted, RunFolder, config_record, preemption, quiet_logs

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
        self.eval_batch_size = tc.eval_batch_size or tc.batch_size
        self.mesh = make_mesh(tc.devices)
        check_batch(self.mesh, batch_size=tc.batch_size, eval_batch_size=self.eval_batch_size)
        if tc.batch_size % tc.grad_accum or (tc.batch_size // tc.grad_accum) % self.mesh.size:
            raise ConfigError(
                f"trainer.grad_accum={tc.grad_accum} does not split trainer.batch_size="
                f"{tc.batch_size} into micro-batches that split over {self.mesh.size} devices"
            )
        self.train_loader = self._train_loader(self.dataset)
        self.stages = [
            (s.steps, self._train_loader(self._stage_dataset(i)))
            for i, s in enumerate(tc.curriculum)
        ]
        self.warmup_steps = warmup = sum(steps for steps, _ in self.stages)
        steps_per_epoch = self.train_loader.steps_per_epoch
        self.total_steps = (
            tc.max_steps if tc.max_steps is not None else warmup + tc.epochs * steps_per_epoch
        )
        if self.total_steps <= warmup:
            raise ConfigError(
                f"trainer.curriculum's {warmup} steps leave none of trainer.max_steps="
                f"{self.total_steps} for the configured dataset; raise max_steps"
            )
        model = build_model(config, spec, tc.seed)
        packed = "segment_ids" in self.dataset.source("train")[0]
        if packed and tc.objective == "causal_lm" and not model.blocks[0].layer.packs_segments:
            raise ConfigError(
                f"dataset {spec.name!r} gives packed rows (segment_ids), which layer="
                f"{config.layer_name} does not take; valid: {', '.join(packing_layers())} "
                "(or dataset.packed=false)"
            )
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.tx = make_optimizer(
            config.optimizer, config.scheduler, self.total_steps, param_labels(params)
        )
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        if tc.init_from is not None:
            params = backbone_from(tc.init_from, params)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "rest": rest,
            "opt_state": self.tx.init(params),
            "key": jax.random.key_data(jax.random.key(tc.seed)),
            "window": zero_window(),
            "diverged_at": jnp.zeros((), jnp.int32),
        }
        # Batches split over the mesh; the state replicated (or FSDP-split): see parallel.py.
        self.shardings = state_shardings(state, self.mesh, tc.fsdp)
        self.initial_state = jax.device_put(state, self.shardings)
        self.batch_sharding, everywhere = batch_sharding(self.mesh), replicated(self.mesh)
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.shardings, self.batch_sharding),
            out_shardings=(self.shardings, everywhere),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            self._eval_step,
            in_shardings=(
                self.shardings["params"],
                self.shardings["rest"],
                self.batch_sharding,
                everywhere,
            ),
            out_shardings=everywhere,
        )

    def _train_loader(self, dataset) -> Loader:
        """Batches padded to the dataset's length: one compiled step per dataset (stage)."""
        tc = self.config.trainer
        source, length = dataset.source("train"), dataset.spec.seq_len
        if tc.batch_size > len(source):
            raise ConfigError(
                f"trainer.batch_size={tc.batch_size} is larger than the training split "
                f"({len(source)} examples)"
            )
        return Loader(source, tc.batch_size, seed=tc.seed, pad_to=length, shard=host_shard())

    def _stage_dataset(self, index: int):
        """The dataset of curriculum stage ``index``: the configured one with some options
        changed; its classes and vocabulary must be the configured dataset's."""
        config, where = self.config, f"trainer.curriculum[{index}].dataset"
        options = {**options_of(config.dataset), **config.trainer.curriculum[index].dataset}
        options = from_mapping(dataset_options_class(config.dataset_name), options, where)
        dataset = get_dataset(config.dataset_name, **options_of(options))
        for key in ("num_classes", "vocab_size"):
            here, there = getattr(dataset.spec, key), getattr(self.dataset.spec, key)
            if here != there:
                raise ConfigError(
                    f"{where} changes the dataset's {key} ({there} -> {here}); a curriculum "
                    "stage may change only what keeps the model's input and output the same"
                )
        return dataset

    def train_batches(self, step: int):
        """The training batches from ``step`` to the end of its epoch or curriculum stage."""
        ends = [*itertools.accumulate(steps for steps, _ in self.stages), self.total_steps]
        loaders = [loader for _, loader in self.stages] + [self.train_loader]
        index = sum(end <= step for end in ends[:-1])
        start = ends[index - 1] if index else 0
        epoch, offset = divmod(step - start, loaders[index].steps_per_epoch)
        yield from itertools.islice(loaders[index].batches(epoch, offset), ends[index] - step)

    def put(self, batch: dict, *, local: bool = True) -> dict:
        """A batch as global arrays split over the mesh: from this host's rows (``local``, as
        the train loader gives them) or from the whole batch, which every host holds."""
        return global_batch(batch, self.batch_sharding, local=local)

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

    def _segment_ids(self, batch):
        """A causal_lm batch's ``segment_ids`` (b, l) (packed rows), else None."""
        return batch.get("segment_ids") if self.config.trainer.objective == "causal_lm" else None

    def _apply(self, params, rest, inputs, mask, *, train, key=None, segment_ids=None):
        model = nnx.merge(self.graphdef, params, rest)
        logits = model(inputs, mask, train=train, key=key, segment_ids=segment_ids)
        return logits, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    def _gradients(self, params, rest, batch, key):
        """(summed gradients of the loss over the scored examples or positions, new
        non-parameter state, summed stats) of a batch, over ``trainer.grad_accum`` micro-batches
        (rows ``j::grad_accum`` each, so every device keeps its share) run one after another."""
        k = self.config.trainer.grad_accum

        def micro_step(carry, micro):
            rest, grads_sum, stats_sum, index = carry
            micro_key = key if k == 1 else jax.random.fold_in(key, index)
            inputs, labels, positions = self._targets(micro, micro_key)
            weights = jnp.ones(inputs.shape[:1], jnp.float32)

            def loss_fn(params):
                logits, new_rest = self._apply(
                    params,
                    rest,
                    inputs,
                    micro["mask"],
                    train=True,
                    key=micro_key,
                    segment_ids=self._segment_ids(micro),
                )
                stats = loss_and_metrics(logits, labels, positions, weights)[1]
                return stats["loss_sum"], (new_rest, stats)

            (_, (rest, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            add = functools.partial(jax.tree.map, jnp.add)
            return (rest, add(grads_sum, grads), add(stats_sum, stats), index + 1), None

        micros = jax.tree.map(
            lambda x: jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0), batch
        )
        zeros = (jax.tree.map(jnp.zeros_like, params), zero_window())
        carry = (rest, *zeros, jnp.zeros((), jnp.int32))
        (rest, grads, stats, _), _ = jax.lax.scan(micro_step, carry, micros)
        return grads, rest, stats

    def _train_step(self, state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        grads, rest, stats = self._gradients(state["params"], state["rest"], batch, key)
        count = jnp.maximum(stats["count"], 1.0)
        loss = stats["loss_sum"] / count
        grads = jax.tree.map(lambda g: g / count, grads)  # of the mean loss
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        window = jax.tree.map(jnp.add, state["window"], stats)
        step = state["step"] + 1
        first_bad = (state["diverged_at"] == 0) & ~all_finite((loss, params, opt_state))
        new_state = dict(
            state,
            step=step,
            params=params,
            rest=rest,
            opt_state=opt_state,
            window=window,
            diverged_at=jnp.where(first_bad, step, state["diverged_at"]),
        )
        return new_state, stats

    def _eval_step(self, params, rest, batch, key):
        inputs, labels, positions = self._targets(batch, key)
        segment_ids = self._segment_ids(batch)
        logits, _ = self._apply(
            params, rest, inputs, batch["mask"], train=False, segment_ids=segment_ids
        )
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
                self.put(pad_batch(batch, self.eval_batch_size), local=False),
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


def check_diverged(state, checkpoints: Checkpoints):
    """Raise TrainingDiverged naming the last (finite) checkpoint if a step of ``state`` had a
    non-finite loss, parameter or optimizer value."""
    at = int(state["diverged_at"])
    if at == 0:
        return
    last = checkpoints.latest.latest_step()
    kept = "no checkpoint yet" if last is None else f"last good checkpoint: step {last}"
    raise TrainingDiverged(
        f"training diverged at step {at} (a NaN or infinite loss, parameter or optimizer "
        f"value); stopped ({kept} in {checkpoints.directory})"
    )


def train(config: ExperimentConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Train, evaluating every epoch; return the final metrics (test at the best validation).

    With ``trainer.resume`` the run continues from the latest checkpoint in ``output_dir``
    exactly: same step, data order, dropout keys and logged metrics. The folder's bookkeeping
    (lock, fresh/overwrite/resume checks) is ``ssm.train.run_dir``'s. SIGTERM or SIGINT saves a
    checkpoint at the next step boundary and raises ``Preempted``. ``on_step(step)`` is called
    after each step. With ``trainer.seeds`` one vmapped step trains a run per seed, each in
    ``output_dir/seed_<s>`` as if alone; the results are their mean and std (``_std``).
    """
    tc = config.trainer
    quiet_logs()
    initialize(tc.distributed)
    out = Path(tc.output_dir)
    with (
        RunFolder(out, config, resume=tc.resume, overwrite=tc.overwrite) as folder,
        preemption() as signals,
    ):
        if tc.seeds is not None and make_mesh(tc.devices).size > 1:
            raise ConfigError("trainer.seeds trains on one device: set trainer.devices=1")
        if tc.seeds is None:
            members = [_Member(Trainer(config), folder)]
        else:
            members = [_Member(Trainer(seed_config(config, seed)), folder) for seed in tc.seeds]
            for member in members[1:]:  # one compiled evaluation for all seeds
                member.trainer.eval_step = members[0].trainer.eval_step
        first = members[0].trainer
        bar = tqdm(total=first.total_steps, disable=not tc.progress, desc="train")
        try:
            baseline = first.unigram_baseline() if tc.objective == "causal_lm" else {}
            if baseline:
                unit = "byte" if first.dataset.spec.byte_level else "token"
                value = next(iter(baseline.values()))
                print(f"unigram baseline: {value:.4f} bits per {unit}", flush=True)
            states = [member.start() for member in members]
            step = int(states[0]["step"])
            bar.update(step)
            steps = _Steps(members, states)
            state = _run(steps, step, bar, signals, on_step)
            results = [
                m.results(steps.member_state(state, i), baseline) for i, m in enumerate(members)
            ]
            if tc.seeds is None:
                return results[0]
            summary = seed_summary(tc.seeds, results)
            write_atomically(out / "results.json", json.dumps(summary, indent=2))
            return summary
        finally:
            bar.close()
            for member in members:
                member.close()


def seed_config(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The config of one seed of a ``trainer.seeds`` run: its own seed and folder."""
    out = Path(config.trainer.output_dir) / f"seed_{seed}"
    trainer = dataclasses.replace(config.trainer, seed=seed, seeds=None, output_dir=str(out))
    return dataclasses.replace(config, trainer=trainer)


def seed_summary(seeds, results: list[dict]) -> dict:
    """Mean and sample std over seeds of every metric, and each seed's results."""
    summary = {"seeds": list(seeds), "step": results[0]["step"]}
    summary["best_step"] = [r["best_step"] for r in results]
    for key in results[0]:
        if "/" in key:
            values = np.array([r[key] for r in results])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[key], summary[f"{key}_std"] = float(values.mean()), std
    summary["per_seed"] = {str(seed): r for seed, r in zip(seeds, results, strict=True)}
    return summary


class _Member:
    """One run inside ``train()``: its trainer, checkpoints, metrics file and folder."""

    def __init__(self, trainer: Trainer, folder: RunFolder):
        self.trainer, self.folder = trainer, folder
        self.tc = tc = trainer.config.trainer
        self.out = Path(tc.output_dir)
        best = "validation/loss" if trainer.language_model else "validation/accuracy"
        mode = "min" if trainer.language_model else "max"
        self.checkpoints = Checkpoints(self.out / "checkpoints", best, mode, tc.keep_checkpoints)
        self.metrics = None
        self.last_validation = (None, {})  # (step, metrics) of the latest validation

    def start(self):
        """The state to train from: the latest checkpoint on resume, else the initial state
        (saved as step 0, a finite start to come back to)."""
        state = self.trainer.initial_state
        restored = self.checkpoints.restore_latest(state) if self.tc.resume else None
        if restored is not None:
            state = restored[1]
            self.folder.record_resume(restored[0])
            print(f"resumed from step {restored[0]} in {self.checkpoints.directory}", flush=True)
        elif self.out != self.folder.path:  # a seed's own folder
            self.out.mkdir(parents=True, exist_ok=True)
            write_atomically(
                self.out / "config.json", json.dumps(config_record(self.trainer.config))
            )
        step = int(state["step"])
        if restored is None:
            self.checkpoints.save_latest(step, state)
        self.metrics = MetricsWriter(
            self.out, tensorboard=self.tc.tensorboard, resume_step=step if self.tc.resume else None
        )
        return state

    def save(self, step, state):
        check_diverged(state, self.checkpoints)
        self.checkpoints.save_latest(step, state)

    def log(self, step: int, state, bar):
        """Write the training metrics summed since the last log line."""
        check_diverged(state, self.checkpoints)
        window = self.trainer.summary(jax.device_get(state["window"]), "train")
        bar.set_postfix(loss=f"{window['train/loss']:.4f}")
        self.metrics.write(step, window, echo=not self.tc.progress)

    def after_step(self, step: int, state_of: Callable[[], dict]):
        """Sample, checkpoint and validate as due at ``step``; ``state_of()`` gives the state
        (taken only when needed)."""
        tc, trainer = self.tc, self.trainer
        total, per_epoch = trainer.total_steps, trainer.train_loader.steps_per_epoch
        after = step - trainer.warmup_steps  # steps on the configured dataset (after a curriculum)
        if tc.objective == "causal_lm" and tc.sample_every and step % tc.sample_every == 0:
            state = state_of()
            check_diverged(state, self.checkpoints)
            write_sample(self.out, trainer.samples(state, step, tc.sample_length))
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            self.save(step, state_of())
        due = step % tc.eval_every == 0 if tc.eval_every else after > 0 and after % per_epoch == 0
        if due or step == total:
            state = state_of()
            check_diverged(state, self.checkpoints)
            val = trainer.evaluate(state, "validation")
            self.last_validation = (step, val)
            self.metrics.write(step, {"epoch": max(after, 0) / per_epoch, **val})
            self.checkpoints.save_if_best(step, state, val)
            self.save(step, state)

    def results(self, state, baseline) -> dict:
        """Validation and test metrics of the best checkpoint, written to ``results.json``."""
        trainer, step = self.trainer, int(state["step"])
        best_step, best_state = self.checkpoints.restore_best(state) or (step, state)
        results = {"step": step, "best_step": best_step, **baseline}
        last_step, last = self.last_validation
        if last_step == best_step:  # the best is the state just evaluated
            results.update(last)
        else:
            results.update(trainer.evaluate(best_state, "validation"))
        results.update(trainer.evaluate(best_state, "test"))
        self.metrics.write(step, {k: v for k, v in results.items() if "/" in k}, echo=False)
        write_atomically(self.out / "results.json", json.dumps(results, indent=2))
        return results

    def close(self):
        if self.metrics is not None:
            self.metrics.close()
        self.checkpoints.close()


class _Steps:
    """The train step of one run, or of several seeds at once (states and batches stacked on a
    leading seed axis, one ``jax.vmap``-ed step)."""

    def __init__(self, members: list[_Member], states: list[dict]):
        self.members = members
        first = members[0].trainer
        if len(members) == 1:
            self.state, self.step = states[0], first.train_step
            return
        self.state = jax.tree.map(lambda *x: jnp.stack(x), *states)
        self.step = jax.jit(jax.vmap(first._train_step), donate_argnums=0)

    def batches(self, step: int):
        """The batches from ``step`` to the end of its epoch or stage: one run's, or every
        seed's stacked."""
        loaders = [m.trainer.train_batches(step) for m in self.members]
        if len(loaders) == 1:
            yield from map(self.members[0].trainer.put, loaders[0])
            return
        for batches in zip(*loaders, strict=True):
            yield {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def member_state(self, state, index: int):
        if len(self.members) == 1:
            return state
        return jax.tree.map(lambda x: x[index], state)


def _run(steps: _Steps, step: int, bar, signals, on_step) -> dict:
    """Train every member from ``step`` to the end; the final (possibly stacked) state."""
    first = steps.members[0].trainer
    total, log_every = first.total_steps, first.config.trainer.log_every
    state = steps.state
    while step < total:
        for batch in steps.batches(step):
            state, _ = steps.step(state, batch)
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == total:
                for i, member in enumerate(steps.members):
                    member.log(step, steps.member_state(state, i), bar)
                state = dict(state, window=jax.tree.map(jnp.zeros_like, state["window"]))
            for i, member in enumerate(steps.members):
                member.after_step(step, functools.partial(steps.member_state, state, i))
            if on_step is not None:
                on_step(step)
            if signals["signal"] is not None and step < total:
                for i, member in enumerate(steps.members):
                    member.save(step, steps.member_state(state, i))
                out = steps.members[0].folder.path
                raise Preempted(
                    f"{signals['signal']} at step {step}: checkpoint saved in "
                    f"{steps.members[0].checkpoints.directory}; continue with trainer.resume=true "
                    f"trainer.output_dir={out} (or the same hydra.run.dir)"
                )
            if step == total:
                break
    return state


def write_atomically(path: Path, text: str):
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
