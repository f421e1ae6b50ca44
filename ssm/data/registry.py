"""The dataset registry: the trainer picks datasets by name (``dataset=digits``).

A registered dataset is a factory ``fn(*, <options>) -> Dataset`` with keyword-only options (their
annotations and defaults are the config schema). A ``Dataset`` has a ``spec`` and a random-access
``source(split)`` whose examples are dicts of numpy arrays:

- ``inputs``: (l, d_input) float32 for real-valued inputs, or (l,) int32 tokens;
- ``label``: int class index, or (l,) int32 per-position targets (with ``pooling: none``);
- ``label_mask`` (optional): (l,) bool, the positions whose targets count in the loss (e.g. the
  answer positions of selective copying); absent means every valid position counts;
- ``length`` (optional): int number of valid positions; absent means all ``l`` are valid
  ((2,) for paired inputs).
"""

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_type_hints

from ssm.config import checks_numbers, from_mapping, options_dataclass, options_of
from ssm.registry import Registry

DATASETS = Registry("dataset")
SPLITS = ("train", "validation", "test")


def register_dataset(
    name: str, shared: type | None = None
) -> Callable[[Callable[..., "Dataset"]], Callable[..., "Dataset"]]:
    """Function decorator: register a dataset factory under ``name``.

    Args:
        name: the registry name.
        shared: a dataclass of options that a family of datasets shares, declared and documented
            there once. The factory takes them as ``**options``; its signature (the config schema)
            gains the dataclass's fields, with their annotations and defaults, after its own.
    """

    def register(fn: Callable[..., "Dataset"]) -> Callable[..., "Dataset"]:
        if shared is not None:
            _share_options(fn, shared)
        return DATASETS.register(name)(checks_numbers(fn))

    return register


def _share_options(fn: Callable, shared: type) -> None:
    signature = inspect.signature(fn)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    if len(own) == len(signature.parameters):
        raise TypeError(f"{fn.__name__} must take **options to share {shared.__name__}")
    hints = get_type_hints(shared, include_extras=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter(f.name, keyword, default=f.default, annotation=hints[f.name])
        for f in dataclasses.fields(shared)
    ]
    fn.__signature__ = signature.replace(parameters=[*own, *extra])
    fn.__annotations__ = {**fn.__annotations__, **hints}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset.

    Attributes:
        name: registry name.
        seq_len: l, the (maximum) sequence length.
        num_classes: number of label classes.
        d_input: real-valued input channels, or None for token inputs.
        vocab_size: token vocabulary size, or None for real-valued inputs.
        splits: the split names ``source`` accepts; by default train, validation and test.
        paired: inputs are pairs, (2, l) tokens or (2, l, d_input), for a two-tower model
            (e.g. LRA Retrieval); lengths and masks are then per member, (2,) and (2, l).
        byte_level: tokens are bytes, so language-model bits per token are bits per byte.
    """

    name: str
    seq_len: int
    num_classes: int
    d_input: int | None = None
    vocab_size: int | None = None
    splits: tuple[str, ...] = SPLITS
    paired: bool = False
    byte_level: bool = False


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset: its spec and one random-access source per split.

    Attributes:
        spec: the dataset's shapes and splits.
        sources: split name -> source with ``len()`` and ``__getitem__(i) -> example dict``.
    """

    spec: DatasetSpec
    sources: Mapping[str, Any]

    def __post_init__(self):
        if set(self.sources) != set(self.spec.splits):
            raise ValueError(
                f"dataset {self.spec.name!r} has sources for {sorted(self.sources)} "
                f"but its spec lists splits {list(self.spec.splits)}"
            )

    def source(self, split: str):
        """The random-access source of ``split``; unknown splits fail naming the valid ones."""
        if split not in self.spec.splits:
            raise ValueError(
                f"unknown split {split!r} of dataset {self.spec.name!r}; "
                f"valid: {', '.join(self.spec.splits)}"
            )
        return self.sources[split]


def resolve_data_dir(data_dir: str | None) -> str:
    """``data_dir``, else ``$SSM_DATA_DIR``, else ``~/.cache/ssm_jax/tfds``."""
    if data_dir is None:
        data_dir = os.environ.get("SSM_DATA_DIR") or "~/.cache/ssm_jax/tfds"
    return os.path.expanduser(data_dir)


# What ``size`` means for every dataset: (examples of train, examples of each other split);
# ``full`` keeps every example. Datasets that generate their data (ListOps, Pathfinder) generate
# that many; the others are cut to the first examples of each split, so any preset can run
# quickly with ``dataset.size=small``.
SIZES = {"small": (2_000, 200), "tiny": (64, 16)}
Size = Literal["full", "small", "tiny"]


def split_sizes(size: str, splits: tuple[str, ...] = SPLITS) -> dict[str, int] | None:
    """Examples of each of ``splits`` at ``size`` (see ``SIZES``); None for ``full``."""
    if size == "full":
        return None
    if size not in SIZES:
        raise ValueError(f"unknown dataset size {size!r}; valid: full, {', '.join(SIZES)}")
    train, other = SIZES[size]
    return {split: train if split == "train" else other for split in splits}


class Subset:
    """The first ``size`` examples of a random-access source."""

    def __init__(self, source, size: int):
        self.source, self.size = source, min(size, len(source))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        return self.source[index % self.size]


def _builds_own_size(fn: Callable) -> bool:
    return "size" in inspect.signature(fn).parameters


def dataset_options_class(name: str) -> type:
    """The frozen dataclass of the named dataset's options (checked at config time).

    Every dataset has a ``size`` option (full | small | tiny), its factory's or the generic one.
    """
    fn = DATASETS.get(name)
    class_name = name.title().replace("_", "") + "Options"
    extra = () if _builds_own_size(fn) else (("size", Size, dataclasses.field(default="full")),)
    return options_dataclass(fn, class_name, extra=extra)


def subset(dataset: Dataset, size: str) -> Dataset:
    """``dataset`` with each split cut to its first ``split_sizes(size)`` examples; ``full``
    returns it unchanged."""
    caps = split_sizes(size, dataset.spec.splits)
    if caps is None:
        return dataset
    sources = {split: Subset(dataset.source(split), caps[split]) for split in dataset.spec.splits}
    return Dataset(dataset.spec, sources)


def get_dataset(name: str, **options) -> Dataset:
    """Build the named dataset; options are checked against its factory's signature."""
    config = from_mapping(dataset_options_class(name), options, where="dataset")
    fn, kwargs = DATASETS.get(name), options_of(config)
    if _builds_own_size(fn):
        return fn(**kwargs)
    size = kwargs.pop("size")
    return subset(fn(**kwargs), size)
