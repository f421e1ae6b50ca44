"""Typed frozen configs of a training run. ``experiment_config`` builds them from a plain dict."""

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from ssm.config import (
    ConfigError,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    from_mapping,
)
from ssm.data.registry import DATASETS, dataset_options_class
from ssm.layers.registry import LAYERS, layer_options_class
from ssm.models.sequence import ModelOptions
from ssm.train.objectives import Objective


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW for regular parameters; Adam at ``ssm_lr`` with no weight decay for SSM parameters."""

    lr: NonNegativeFloat = 1e-2
    ssm_lr: NonNegativeFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    b1: Fraction = 0.9
    b2: Fraction = 0.999
    grad_clip: PositiveFloat | None = None


@dataclass(frozen=True)
class SchedulerConfig:
    """Learning-rate schedule applied to both groups: linear warmup, then constant/cosine/linear."""

    name: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: NonNegativeInt = 0
    end_ratio: Annotated[float, Range(0, 1)] = 0.0


@dataclass(frozen=True)
class CurriculumStage:
    """``steps`` training steps on the dataset with the options ``dataset`` changed (e.g. a
    shorter ``seq_len``); validation and test always use the configured dataset."""

    steps: PositiveInt
    dataset: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class TrainerConfig:
    """Objective, loop length, batching, evaluation, checkpointing and logging.

    ``objective``: see ``ssm.train.objectives``; ``mask_rate``: masked_lm's masking probability.
    ``eval_every``: steps between validations (None: once per epoch).
    ``init_from``: a run folder whose backbone weights (everything but the head) start this run.
    ``curriculum``: stages trained, in order, before the configured dataset (e.g. sequence-length
    warmup: ``[{steps: 1500, dataset: {seq_len: 64}}]``); their steps count towards
    ``max_steps``, and ``epochs`` (and so the once-per-epoch validation) counts the configured
    dataset's epochs after them.
    ``sample_every``: causal_lm only, steps between samples of the model (a greedy and a
    temperature-1 continuation of ``sample_length`` tokens after the start of the first
    validation example) appended to ``samples.jsonl`` and printed.
    ``overwrite``: a fresh run may replace the run an ``output_dir`` holds (else it stops).
    ``keep_checkpoints``: latest checkpoints kept (a damaged newest falls back to the previous).
    ``grad_accum``: micro-batches per step (the batch's gradient, in ``grad_accum`` passes).
    ``devices``: devices the batch is split over (None: all); ``fsdp``: split the parameters
    and optimizer state too; ``distributed``: start the multi-host runtime
    (``jax.distributed.initialize``). See ``ssm.train.parallel``.
    ``seeds``: train one run per seed at once (one vmapped step), each in
    ``output_dir/seed_<s>``; ``seed`` is then unused.
    """

    objective: Objective = "classify"
    mask_rate: Annotated[float, Range(0, 1, min_open=True, max_open=True)] = 0.15
    init_from: str | None = None
    curriculum: tuple[CurriculumStage, ...] = ()
    seed: NonNegativeInt = 0
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt | None = None
    epochs: PositiveInt = 10
    max_steps: PositiveInt | None = None
    output_dir: str = "outputs/run"
    resume: bool = False
    checkpoint_every: PositiveInt | None = None
    eval_every: PositiveInt | None = None
    sample_every: PositiveInt | None = None
    sample_length: PositiveInt = 64
    log_every: PositiveInt = 20
    progress: bool = True
    tensorboard: bool = True
    overwrite: bool = False
    keep_checkpoints: PositiveInt = 2
    grad_accum: PositiveInt = 1
    devices: PositiveInt | None = None
    fsdp: bool = False
    distributed: bool = False
    seeds: tuple[NonNegativeInt, ...] | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; ``layer`` and ``dataset`` are the chosen entries' option classes."""

    layer_name: str
    layer: Any
    dataset_name: str
    dataset: Any
    model: ModelOptions = dataclasses.field(default_factory=ModelOptions)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    name: str = "run"


GROUPS = {
    "model": ModelOptions,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "trainer": TrainerConfig,
}


def _named(raw: Mapping, group: str, registry, options_class):
    options = dict(raw.get(group) or {})
    if "name" not in options:
        raise ConfigError(f"missing {group}.name; valid: {', '.join(registry.names())}")
    name = options.pop("name")
    if name not in registry:
        raise ConfigError(f"unknown {group} {name!r}; valid: {', '.join(registry.names())}")
    return name, from_mapping(options_class(name), options, group)


def experiment_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Check and convert a plain mapping (e.g. a resolved Hydra config) to an ExperimentConfig."""
    valid = ["name", "layer", "dataset", *GROUPS]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; valid: {', '.join(valid)}")
    layer_name, layer = _named(raw, "layer", LAYERS, layer_options_class)
    dataset_name, dataset = _named(raw, "dataset", DATASETS, dataset_options_class)
    groups = {group: from_mapping(cls, raw.get(group), group) for group, cls in GROUPS.items()}
    return ExperimentConfig(
        layer_name=layer_name,
        layer=layer,
        dataset_name=dataset_name,
        dataset=dataset,
        name=str(raw.get("name", "run")),
        **groups,
    )


def run_config(output_dir, **dataset_overrides) -> ExperimentConfig:
    """The ExperimentConfig saved in ``output_dir/config.json`` with some dataset options changed.

    Raises ConfigError if the folder holds no run or an override names an unknown dataset option.
    """
    path = Path(output_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"run={output_dir} holds no config.json (not a training run)")
    saved = json.loads(path.read_text())
    raw = {group: saved[group] for group in GROUPS}
    raw["name"] = saved["name"]
    raw["layer"] = {"name": saved["layer_name"], **saved["layer"]}
    raw["dataset"] = {"name": saved["dataset_name"], **saved["dataset"], **dataset_overrides}
    return experiment_config(raw)
