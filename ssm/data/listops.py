"""LRA ListOps: nested MIN / MAX / MED / SM expressions over digits, generated from a seed.

The recipe is LRA's (``lra_benchmarks/data/listops.py``): a node at depth < 10 (the root has
depth 1) is an operator with probability 0.25, with 2..10 arguments and a uniform operator, else
a uniform digit 0..9. MED is the integer part of the median, SM the sum modulo 10. Trees whose
token length is strictly between 500 and 2000 are kept, duplicates dropped; the first 96,000 /
2,000 / 2,000 distinct trees are train / validation / test. Unlike LRA's generator, trees are drawn
by a seeded NumPy generator in a fixed order, so a seed always gives the same data.

Tokens follow S4's tokenizer (brackets dropped, the closing ``]`` kept): 0 pad, 1..10 the digits
0..9, 11..14 MIN MAX MED SM, 15 the closing token. Sequences are stored unpadded and read padded
to l = 2048 (S4's ``l_max``) with a ``length``. ``size`` picks smaller versions of the same
recipe, ``small`` for quick runs and ``tiny`` for tests (``ssm.data.registry.SIZES``).
"""

import dataclasses
import hashlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ssm.config import NonNegativeInt
from ssm.data.build import Builder, builder_dataset, prepare_builder
from ssm.data.registry import SPLITS, Dataset, DatasetSpec, Size, register_dataset, split_sizes

PAD, END = 0, 15
DIGIT0 = 1  # token of digit d is DIGIT0 + d
OPERATORS = ("MIN", "MAX", "MED", "SM")
OP0 = 11  # token of OPERATORS[k] is OP0 + k
VOCAB_SIZE = 16
NUM_CLASSES = 10
SEQ_LEN = 2048
MIN_LENGTH, MAX_LENGTH = 500, 2000  # kept trees have MIN_LENGTH < tokens < MAX_LENGTH
MAX_DEPTH, MAX_ARGS, OPERATOR_P = 10, 10, 0.25
FULL = {"train": 96_000, "validation": 2_000, "test": 2_000}  # LRA's splits
_BATCH = 2048  # trees drawn per vectorised step; part of the recipe (changes the stream)


def _median(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """int(np.median) of each contiguous group of ``values`` already sorted within groups."""
    upper = values[starts + counts // 2]
    lower = values[starts + (counts - 1) // 2]
    return (lower + upper) // 2


def sample_trees(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Draws ``n`` trees level by level, vectorised over trees and nodes.

    Returns:
        tokens: one (length,) int32 token array per tree, in pre-order with closing tokens.
        labels: (n,) int32 value of each tree.
    """
    # Top-down: per depth, each node's tree, whether it is an operator, its operator / digit,
    # its number of arguments and its parent (an index into the previous depth).
    levels = []
    tree, parent = np.arange(n), np.full(n, -1)
    for depth in range(1, MAX_DEPTH + 1):
        m = len(tree)
        if m == 0:
            break
        is_op = rng.random(m) <= OPERATOR_P if depth < MAX_DEPTH else np.zeros(m, bool)
        op = rng.integers(0, len(OPERATORS), m)
        digit = rng.integers(0, 10, m)
        nargs = np.where(is_op, rng.integers(2, MAX_ARGS + 1, m), 0)
        levels.append(dict(tree=tree, parent=parent, is_op=is_op, op=op, digit=digit, nargs=nargs))
        parent = np.repeat(np.arange(m), nargs)
        tree = tree[parent]
    # Bottom-up: subtree token sizes and values. Children of a node are contiguous and ordered.
    size, value = None, None
    for level in reversed(levels):
        m, is_op = len(level["tree"]), level["is_op"]
        starts = np.cumsum(level["nargs"]) - level["nargs"]
        level["first_child"] = starts
        if size is None:
            level["size"], level["value"] = np.ones(m, np.int64), level["digit"]
        else:
            child_parent = np.repeat(np.arange(m), level["nargs"])
            level["size"] = np.where(is_op, 2 + np.bincount(child_parent, size, m), 1).astype(
                np.int64
            )
            ops = np.flatnonzero(is_op)
            s, c = starts[ops], level["nargs"][ops]
            ordered = value[np.lexsort((value, child_parent))]
            results = np.stack(
                [
                    ordered[s],  # MIN
                    ordered[s + c - 1],  # MAX
                    _median(ordered, s, c),  # MED
                    np.bincount(child_parent, value, m)[ops].astype(np.int64) % 10,  # SM
                ]
            )
            level["value"] = level["digit"].copy()
            level["value"][ops] = results[level["op"][ops], np.arange(len(ops))]
        size, value = level["size"], level["value"]
    # Top-down: pre-order position of each node within its tree.
    levels[0]["pos"] = np.zeros(n, np.int64)
    for above, level in zip(levels, levels[1:], strict=False):
        size = level["size"]
        before = np.cumsum(size) - size  # sizes of earlier nodes at this depth
        first = above["first_child"][level["parent"]]
        level["pos"] = above["pos"][level["parent"]] + 1 + before - before[first]
    lengths = levels[0]["size"]
    offsets = np.cumsum(lengths) - lengths
    flat = np.empty(int(lengths.sum()), np.int32)
    for level in levels:
        at = offsets[level["tree"]] + level["pos"]
        is_op = level["is_op"]
        flat[at] = np.where(is_op, OP0 + level["op"], DIGIT0 + level["digit"])
        flat[(at + level["size"] - 1)[is_op]] = END
    tokens = np.split(flat, offsets[1:])
    return tokens, levels[0]["value"].astype(np.int32)


def generate(seed: int, count: int) -> Iterator[tuple[np.ndarray, int]]:
    """The first ``count`` distinct kept trees of ``seed``: (tokens (length,) int32, label)."""
    rng = np.random.default_rng([seed, 0x4C4F])  # 0x4C4F: "LO", keeps this stream to ListOps
    seen = set()
    while len(seen) < count:
        tokens, labels = sample_trees(rng, _BATCH)
        for t, label in zip(tokens, labels, strict=True):
            if not MIN_LENGTH < len(t) < MAX_LENGTH:
                continue
            key = hashlib.blake2b(t.astype(np.uint8).tobytes(), digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
            yield t, int(label)
            if len(seen) == count:
                return


@dataclasses.dataclass(eq=False)
class ListOpsConfig(tfds.core.BuilderConfig):
    """A builder config per (size, seed), named ``<size>_seed_<n>``."""

    size: str = "full"
    seed: int = 0


class ListOps(Builder):
    """TFDS builder of generated ListOps; examples are ``tokens`` (length,) int32, ``label``."""

    HOMEPAGE = "https://github.com/google-research/long-range-arena"
    SUPERVISED_KEYS = ("tokens", "label")
    DISABLE_SHUFFLING = True

    def _features(self):
        return {
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }

    def _split_generators(self, dl_manager):
        counts = list((split_sizes(self.builder_config.size) or FULL).values())
        trees = [
            (t.astype(np.uint8), y) for t, y in generate(self.builder_config.seed, sum(counts))
        ]
        ends = np.cumsum(counts)
        return {
            split: self._generate_examples(trees[end - count : end])
            for split, count, end in zip(SPLITS, counts, ends, strict=True)
        }

    def _generate_examples(self, trees: list[tuple[np.ndarray, int]]):
        """Yields (index, example) for trees of (tokens (length,) uint8, label)."""
        for i, (tokens, label) in enumerate(trees):
            yield i, {"tokens": tokens.astype(np.int32), "label": label}


def _padded(example: dict) -> dict:
    """Stored example -> ``inputs`` (SEQ_LEN,) int32 zero-padded, ``label`` and ``length``."""
    tokens = example["tokens"]
    inputs = np.full(SEQ_LEN, PAD, np.int32)
    inputs[: len(tokens)] = tokens
    return {"inputs": inputs, "label": int(example["label"]), "length": len(tokens)}


@register_dataset("listops")
def listops(
    *,
    data_dir: str | None = None,
    size: Size = "full",
    seed: NonNegativeInt = 0,
) -> Dataset:
    """LRA ListOps generated from ``seed``, built under ``data_dir`` on first use.

    Args:
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        size: ``full`` (LRA: 96,000 / 2,000 / 2,000), ``small`` or ``tiny`` (see
            ``ssm.data.registry.SIZES``); all keep the 500 < length < 2000 bound.
        seed: generation seed; each (size, seed) is its own builder config.
    """
    config = ListOpsConfig(name=f"{size}_seed_{seed}", size=size, seed=seed)
    builder = prepare_builder(ListOps, data_dir=data_dir, config=config)
    spec = DatasetSpec("listops", seq_len=SEQ_LEN, num_classes=NUM_CLASSES, vocab_size=VOCAB_SIZE)
    return builder_dataset(builder, spec, _padded)
