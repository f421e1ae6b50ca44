"""Byte-level text datasets from downloaded releases: LRA Text (IMDB) and LRA Retrieval (AAN).

Documents are stored whole as their raw bytes and tokenized when read, as LRA's byte encoder
does: token = byte + 1 (vocabulary 257), so 0 is padding; each document is cut to its first
``max_len`` bytes. Registered datasets and their examples:

- ``imdb`` (LRA Text): IMDB movie reviews (aclImdb v1). ``inputs`` (l,) int32 tokens with
  l <= max_len (4096), ``length`` = l, ``label`` 0 negative / 1 positive. Splits: train and test
  (25,000 each); validation is the test set, as in LRA and the state-spaces code.
- ``aan`` (LRA Retrieval): pairs of ACL Anthology papers, ``label`` 1 if they are linked by a
  citation. ``inputs`` (2, l) int32 tokens, the two documents each cut to max_len (4000) and
  zero-padded to l, the longer of their lengths; ``length`` (2,) int32 of the two lengths. Splits
  train/validation/test are LRA's ``new_aan_pairs.{train,eval,test}.tsv``. Its spec is ``paired``.

The releases are read from ``manual_dir``; with ``download=True`` missing files are first
downloaded there (see ``ssm.data.manual``; for AAN that is LRA's whole ~7 GB release).
"""

import functools
import re
import tarfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ssm.config import PositiveInt
from ssm.data.build import Builder
from ssm.data.manual import Release, ReleaseOptions, RemoteFile, archive_release, release_dataset
from ssm.data.registry import Dataset, DatasetSpec, register_dataset

VOCAB_SIZE = 257  # 256 bytes shifted by one; token 0 is padding

IMDB = archive_release(
    "imdb",
    "IMDB reviews (aclImdb v1)",
    "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    folder="aclImdb",
    contents=tuple(f"{split}/{label}" for split in ("train", "test") for label in ("neg", "pos")),
)
_IMDB_FILE = re.compile(r"aclImdb/(train|test)/(neg|pos)/[^/]+\.txt")

_AAN_TSVS = tuple(f"new_aan_pairs.{split}.tsv" for split in ("train", "eval", "test"))
AAN = Release(
    name="aan",
    title="LRA Retrieval (AAN pairs)",
    url="https://storage.googleapis.com/long-range-arena/lra_release.gz",
    layouts=(_AAN_TSVS,),
    hint="copy the three files from its lra_release/lra_release/tsv_data/ there",
    # The whole LRA release (~7 GB), of which only the three TSVs are extracted.
    files=(
        RemoteFile(
            "https://storage.googleapis.com/long-range-arena/lra_release.gz",
            extract=tuple((f"tsv_data/{name}", name) for name in _AAN_TSVS),
        ),
    ),
)
_AAN_FILES = {"train": "train", "validation": "eval", "test": "test"}

_BYTES = dict(shape=(None,), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)


def tokens(document: np.ndarray, max_len: int) -> np.ndarray:
    """Bytes (n,) uint8 -> tokens (min(n, max_len),) int32, each byte + 1."""
    return document[:max_len].astype(np.int32) + 1


class ImdbRelease(Builder):
    """IMDB reviews read from ``aclImdb_v1.tar.gz`` or ``aclImdb/``; ``text`` (n,) uint8 bytes."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {IMDB.url} into manual_dir."

    DESCRIPTION = "IMDB movie reviews as raw bytes (aclImdb v1)."
    HOMEPAGE = "https://ai.stanford.edu/~amaas/data/sentiment/"

    def _features(self):
        label = tfds.features.ClassLabel(names=["neg", "pos"])
        return {"text": tfds.features.Tensor(**_BYTES), "label": label}

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        archive = IMDB.layout(root) == 0
        return {split: self._generate_examples(root, split, archive) for split in ("train", "test")}

    def _generate_examples(self, root: Path, split: str, archive: bool):
        """Yields (relative path, example) of the split's reviews."""
        for name, read in _imdb_files(root, archive):
            match = _IMDB_FILE.fullmatch(name)
            if match and match[1] == split:
                text = np.frombuffer(read(), dtype=np.uint8)
                yield name, {"text": text, "label": match[2]}


def _imdb_files(root: Path, archive: bool):
    """Yields (path inside the release, function reading its bytes) of every review file."""
    if not archive:
        for path in sorted(root.glob("aclImdb/*/*/*.txt")):
            yield path.relative_to(root).as_posix(), path.read_bytes
        return
    with tarfile.open(root / "aclImdb_v1.tar.gz", "r:gz") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read


class AanRelease(Builder):
    """AAN document pairs read from LRA's TSVs; ``text1``, ``text2`` (n,) uint8 bytes."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Copy new_aan_pairs.*.tsv of {AAN.url} into manual_dir."

    DESCRIPTION = "ACL Anthology Network document pairs of the Long Range Arena."
    HOMEPAGE = "https://github.com/google-research/long-range-arena"

    def _features(self):
        text1, text2 = tfds.features.Tensor(**_BYTES), tfds.features.Tensor(**_BYTES)
        return {"text1": text1, "text2": text2, "label": tfds.features.ClassLabel(num_classes=2)}

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        AAN.layout(root)
        return {
            split: self._generate_examples(root / f"new_aan_pairs.{name}.tsv")
            for split, name in _AAN_FILES.items()
        }

    def _generate_examples(self, path: Path):
        """Yields (line number, example) of a TSV of label, id1, id2, text1, text2 (no quoting)."""
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                fields = line.rstrip(b"\r\n").split(b"\t")
                if len(fields) != 5:
                    raise ValueError(f"{path}:{number}: expected 5 tab-separated fields")
                label, _, _, text1, text2 = fields
                yield (
                    number,
                    {
                        "text1": np.frombuffer(text1, dtype=np.uint8),
                        "text2": np.frombuffer(text2, dtype=np.uint8),
                        "label": int(float(label)),
                    },
                )


def _imdb_example(example: dict, max_len: int) -> dict:
    inputs = tokens(example["text"], max_len)
    return {"inputs": inputs, "length": len(inputs), "label": example["label"]}


def _aan_example(example: dict, max_len: int) -> dict:
    docs = [tokens(example[key], max_len) for key in ("text1", "text2")]
    length = np.array([len(doc) for doc in docs], dtype=np.int32)
    inputs = np.zeros((2, length.max()), dtype=np.int32)
    for row, doc in zip(inputs, docs, strict=True):
        row[: len(doc)] = doc
    return {"inputs": inputs, "length": length, "label": example["label"]}


@register_dataset("imdb", shared=ReleaseOptions)
def imdb(*, max_len: PositiveInt = 4096, **options) -> Dataset:
    """LRA Text: IMDB reviews as byte tokens, built from the downloaded release on first use.

    ``manual_dir`` holds ``aclImdb_v1.tar.gz`` or ``aclImdb/`` (default
    ``<data_dir>/manual/imdb``); ``download`` fetches the archive (84 MB).

    Args:
        max_len: l, bytes kept from the start of each review.
    """
    spec = DatasetSpec("imdb", seq_len=max_len, num_classes=2, vocab_size=VOCAB_SIZE)
    fn = functools.partial(_imdb_example, max_len=max_len)
    stored = {"train": "train", "validation": "test", "test": "test"}
    return release_dataset(ImdbRelease, IMDB, spec, fn, ReleaseOptions(**options), stored=stored)


@register_dataset("aan", shared=ReleaseOptions)
def aan(*, max_len: PositiveInt = 4000, **options) -> Dataset:
    """LRA Retrieval: pairs of AAN papers as byte tokens (a two-tower, ``paired`` dataset).

    ``manual_dir`` holds ``new_aan_pairs.{train,eval,test}.tsv`` (default
    ``<data_dir>/manual/aan``); ``download`` fetches LRA's whole release (~7 GB, its only source)
    and extracts the three TSVs.

    Args:
        max_len: l, bytes kept from the start of each document.
    """
    spec = DatasetSpec("aan", seq_len=max_len, num_classes=2, vocab_size=VOCAB_SIZE, paired=True)
    fn = functools.partial(_aan_example, max_len=max_len)
    return release_dataset(AanRelease, AAN, spec, fn, ReleaseOptions(**options))
