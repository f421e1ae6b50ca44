"""Synthetic sequence tasks generated on the fly: copying, selective copying, induction heads,
multi-query associative recall (MQAR) and the adding problem.

Nothing is stored: example ``i`` of a split is generated on access from
``np.random.default_rng([seed, split_id, i])``, so it is a pure function of (seed, split, i), any
length costs nothing until read, and the sources plug straight into ``Loader``.

Token tasks put the data tokens first, ``0 .. data_vocab - 1``, and their special tokens (blank,
marker, trigger) after them, so the labels are data tokens and ``num_classes`` is the output
vocabulary. Their targets are per position: ``label`` (l,) int32, scored only where
``label_mask`` (l,) is True. The adding problem is real-valued with one label per sequence.

Besides its own options, every task takes those of ``Splits``: examples per split and the seed.
"""

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Annotated

import numpy as np

from ssm.config import NonNegativeInt, PositiveInt, Range
from ssm.data.registry import SPLITS, Dataset, DatasetSpec, register_dataset

Generate = Callable[[np.random.Generator], dict]


class GeneratedSource:
    """Random-access examples made on access; ``source[i]`` is a pure function of (seed, split, i).

    Args:
        generate: ``rng -> example dict``, the task's generator.
        size: number of examples.
        seed: the dataset seed (non-negative).
        split_id: index of the split in ``SPLITS``; different splits draw different examples.
    """

    def __init__(self, generate: Generate, size: int, *, seed, split_id):
        self.generate, self.size, self.seed, self.split_id = generate, size, seed, split_id

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index) -> dict:
        index = operator.index(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} is out of range for {self.size} examples")
        return self.generate(np.random.default_rng([self.seed, self.split_id, index]))


def _require(condition: bool, message: str):
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class Splits:
    """The options every task takes.

    Attributes:
        num_train, num_val, num_test: examples per split.
        seed: generation seed.
    """

    num_train: PositiveInt = 10_000
    num_val: PositiveInt = 1_000
    num_test: PositiveInt = 1_000
    seed: NonNegativeInt = 0


def _dataset(
    spec: DatasetSpec, generators: Generate | dict[str, Generate], splits: Splits
) -> Dataset:
    """A Dataset whose splits have ``splits``' sizes of examples made by ``generators`` (one for
    every split, or a dict of one per split)."""
    seed, sizes = splits.seed, (splits.num_train, splits.num_val, splits.num_test)
    if callable(generators):
        generators = dict.fromkeys(SPLITS, generators)
    sources = {
        split: GeneratedSource(generators[split], size, seed=seed, split_id=i)
        for i, (split, size) in enumerate(zip(SPLITS, sizes, strict=True))
    }
    return Dataset(spec=spec, sources=sources)


def _scored_at(inputs: np.ndarray, positions, targets) -> dict:
    """A token example: ``inputs`` (l,), ``label`` (l,) equal to ``targets`` at ``positions``
    and 0 elsewhere, ``label_mask`` (l,) True exactly at ``positions``."""
    label = np.zeros(inputs.shape, np.int32)
    label_mask = np.zeros(inputs.shape, bool)
    label[positions] = targets
    label_mask[positions] = True
    return {"inputs": inputs, "label": label, "label_mask": label_mask}


def _copy_example(rng, *, seq_len, num_tokens, data_vocab, selective) -> dict:
    """Data tokens among blanks, then ``num_tokens`` markers where the data must come out."""
    blank, marker = data_vocab, data_vocab + 1
    tokens = rng.integers(data_vocab, size=num_tokens, dtype=np.int32)
    context = seq_len - num_tokens
    if selective:
        positions = np.sort(rng.choice(context, size=num_tokens, replace=False))
    else:
        positions = np.arange(num_tokens)
    inputs = np.full(seq_len, blank, np.int32)
    inputs[positions] = tokens
    inputs[context:] = marker
    return _scored_at(inputs, slice(context, seq_len), tokens)


def _copying(name, splits, *, selective, seq_len, num_tokens, data_vocab) -> Dataset:
    _require(
        seq_len >= 2 * num_tokens,
        f"{name}: seq_len={seq_len} must be at least 2 * num_tokens={2 * num_tokens} "
        "(the tokens to copy, then as many output positions)",
    )
    spec = DatasetSpec(name, seq_len=seq_len, num_classes=data_vocab, vocab_size=data_vocab + 2)
    generate = functools.partial(
        _copy_example,
        seq_len=seq_len,
        num_tokens=num_tokens,
        data_vocab=data_vocab,
        selective=selective,
    )
    return _dataset(spec, generate, splits)


@register_dataset("copying", shared=Splits)
def copying(
    *,
    seq_len: PositiveInt = 128,
    num_tokens: PositiveInt = 10,
    data_vocab: PositiveInt = 8,
    **splits,
) -> Dataset:
    """The copying task: memorize a prefix of tokens and reproduce it after a delay.

    Inputs (l,): ``num_tokens`` random data tokens, blanks (token ``data_vocab``), then
    ``num_tokens`` markers (token ``data_vocab + 1``); at the markers the model must output the
    data tokens in order (``label_mask`` True there). The delay is ``seq_len - 2 * num_tokens``.

    Args:
        seq_len: l, total length, at least ``2 * num_tokens``.
        num_tokens: tokens to memorize.
        data_vocab: distinct data tokens (the classes); the input vocabulary adds blank and marker.
    """
    options = dict(seq_len=seq_len, num_tokens=num_tokens, data_vocab=data_vocab)
    return _copying("copying", Splits(**splits), selective=False, **options)


@register_dataset("selective_copying", shared=Splits)
def selective_copying(
    *,
    seq_len: PositiveInt = 256,
    num_tokens: PositiveInt = 16,
    data_vocab: PositiveInt = 16,
    **splits,
) -> Dataset:
    """Selective copying (Mamba, Gu & Dao 2023, sec. 3.1): copy tokens scattered among noise.

    Inputs (l,): the first ``seq_len - num_tokens`` positions hold ``num_tokens`` random data
    tokens at sorted random positions, blanks (token ``data_vocab``) elsewhere; the last
    ``num_tokens`` positions are markers (token ``data_vocab + 1``) where the model must output the
    data tokens in order (``label_mask`` True there). Solving it needs content-aware selection,
    which a time-invariant SSM lacks. The options are those of ``copying``.
    """
    options = dict(seq_len=seq_len, num_tokens=num_tokens, data_vocab=data_vocab)
    return _copying("selective_copying", Splits(**splits), selective=True, **options)


def _induction_example(rng, *, seq_len, data_vocab) -> dict:
    """Random data tokens with ``trigger, target`` once inside and the trigger again at the end."""
    trigger = data_vocab
    inputs = rng.integers(data_vocab, size=seq_len, dtype=np.int32)
    first = rng.integers(seq_len - 2)
    inputs[first] = trigger
    inputs[-1] = trigger
    return _scored_at(inputs, [seq_len - 1], [inputs[first + 1]])


@register_dataset("induction_heads", shared=Splits)
def induction_heads(
    *,
    seq_len: Annotated[int, Range(min=3)] = 256,
    eval_seq_len: Annotated[int, Range(min=3)] | None = None,
    data_vocab: PositiveInt = 16,
    **splits,
) -> Dataset:
    """Induction heads (Olsson et al. 2022; Mamba sec. 4.1.2): recall what followed a trigger.

    Inputs (l,): random data tokens; a trigger token (``data_vocab``) appears once at a random
    position followed by a random data token, and again at the last position, where the model
    must output that token (``label_mask`` True only there). Examples are generated when read, so
    ``eval_seq_len`` can test length generalization up to 2^20 and beyond.

    Args:
        seq_len: l of the train split, at least 3.
        eval_seq_len: l of the validation and test splits; None means ``seq_len``.
        data_vocab: distinct data tokens (the classes); the input vocabulary adds the trigger.
    """
    eval_seq_len = seq_len if eval_seq_len is None else eval_seq_len
    train = functools.partial(_induction_example, seq_len=seq_len, data_vocab=data_vocab)
    held_out = functools.partial(_induction_example, seq_len=eval_seq_len, data_vocab=data_vocab)
    spec = DatasetSpec(
        "induction_heads",
        seq_len=max(seq_len, eval_seq_len),
        num_classes=data_vocab,
        vocab_size=data_vocab + 1,
    )
    generators = {"train": train, "validation": held_out, "test": held_out}
    return _dataset(spec, generators, Splits(**splits))


def _mqar_example(rng, *, seq_len, vocab_size, num_kv_pairs, gap_probs) -> dict:
    """Key-value pairs, then each key queried once among random tokens; label: its value."""
    half = vocab_size // 2
    keys = rng.choice(half, size=num_kv_pairs, replace=False).astype(np.int32)
    values = (half + rng.choice(vocab_size - half, size=num_kv_pairs, replace=False)).astype(
        np.int32
    )
    context = 2 * num_kv_pairs
    inputs = rng.integers(vocab_size, size=seq_len, dtype=np.int32)
    inputs[0:context:2] = keys
    inputs[1:context:2] = values
    gaps = rng.choice(len(gap_probs), size=num_kv_pairs, replace=False, p=gap_probs)
    queries = context + 2 * gaps
    inputs[queries] = keys
    return _scored_at(inputs, queries, values)


@register_dataset("mqar", shared=Splits)
def mqar(
    *,
    seq_len: PositiveInt = 256,
    num_kv_pairs: PositiveInt = 16,
    vocab_size: PositiveInt = 256,
    power_a: Annotated[float, Range(0, 1, min_open=True)] = 0.01,
    **splits,
) -> Dataset:
    """Multi-query associative recall (Zoology, Arora et al. 2023), after its generator.

    Inputs (l,): ``num_kv_pairs`` pairs ``k v`` (distinct keys from the lower half of the
    vocabulary, distinct values from the upper half), then random tokens among which every key is
    queried once, at even offsets ``2 g`` after the pairs with gaps ``g`` drawn without replacement
    with probability proportional to ``(g + 1) ** (power_a - 1)`` (most queries come soon). At
    each query the model must output the key's value (``label_mask`` True there). As in Zoology,
    the filler tokens are uniform over the whole vocabulary.

    Args:
        seq_len: l, at least ``4 * num_kv_pairs``.
        num_kv_pairs: pairs to remember and queries.
        vocab_size: input vocabulary, also the classes; at least ``2 * num_kv_pairs``.
        power_a: exponent of the power law of query gaps, in (0, 1]; 1 is uniform.
    """
    _require(
        seq_len >= 4 * num_kv_pairs,
        f"mqar: seq_len={seq_len} must be at least 4 * num_kv_pairs={4 * num_kv_pairs}",
    )
    _require(
        vocab_size >= 2 * num_kv_pairs,
        f"mqar: vocab_size={vocab_size} must be at least 2 * num_kv_pairs={2 * num_kv_pairs} "
        "(distinct keys and values)",
    )
    space = (seq_len - 2 * num_kv_pairs) // 2
    gap_probs = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1.0)
    generate = functools.partial(
        _mqar_example,
        seq_len=seq_len,
        vocab_size=vocab_size,
        num_kv_pairs=num_kv_pairs,
        gap_probs=gap_probs / gap_probs.sum(),
    )
    spec = DatasetSpec("mqar", seq_len=seq_len, num_classes=vocab_size, vocab_size=vocab_size)
    return _dataset(spec, generate, Splits(**splits))


def _adding_example(rng, *, seq_len, num_bins) -> dict:
    """Uniform values with two markers; label: the bin of the marked values' sum in [0, 2]."""
    values = rng.random(seq_len, dtype=np.float32)
    half = seq_len // 2
    marked = [rng.integers(half), half + rng.integers(seq_len - half)]
    markers = np.zeros(seq_len, np.float32)
    markers[marked] = 1.0
    total = float(values[marked[0]]) + float(values[marked[1]])
    label = min(int(total / 2.0 * num_bins), num_bins - 1)
    return {"inputs": np.stack([values, markers], axis=-1), "label": label}


@register_dataset("adding", shared=Splits)
def adding(
    *,
    seq_len: Annotated[int, Range(min=2)] = 200,
    num_bins: Annotated[int, Range(min=2)] = 20,
    **splits,
) -> Dataset:
    """The adding problem (Hochreiter & Schmidhuber 1997), as classification of the sum.

    Inputs (l, 2): channel 0 holds values uniform in [0, 1), channel 1 marks two of them (1.0),
    one in each half of the sequence. The target, the sum of the two marked values in [0, 2),
    is quantized into ``num_bins`` equal bins, ``label = floor(sum / 2 * num_bins)``, because the
    trainer is classification-only; more bins ask for finer precision.

    Args:
        seq_len: l, at least 2.
        num_bins: classes, equal-width bins of [0, 2).
    """
    generate = functools.partial(_adding_example, seq_len=seq_len, num_bins=num_bins)
    spec = DatasetSpec("adding", seq_len=seq_len, num_classes=num_bins, d_input=2)
    return _dataset(spec, generate, Splits(**splits))
