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

from ssm.data.manual import MappedSource, Release, RemoteFile, prepare
from ssm.data.registry import Dataset, DatasetSpec, register_dataset, resolve_data_dir

VOCAB_SIZE = 257  # 256 bytes shifted by one; token 0 is padding
SPLITS = ("train", "validation", "test")

IMDB = Release(
    name="imdb",
    title="IMDB reviews (aclImdb v1)",
    url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    layouts=(
        ("aclImdb_v1.tar.gz",),
        tuple(
            f"aclImdb/{split}/{label}" for split in ("train", "test") for label in ("neg", "pos")
        ),
    ),
    hint="put the archive (or its extracted aclImdb/ folder) there",
    files=(RemoteFile("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"),),
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


class ImdbRelease(tfds.core.GeneratorBasedBuilder):
    """IMDB reviews read from ``aclImdb_v1.tar.gz`` or ``aclImdb/``; ``text`` (n,) uint8 bytes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {IMDB.url} into manual_dir."
    code_path = tfds.core.Path(__file__)  # see digits.py (tensorflow/datasets#11212)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="IMDB movie reviews as raw bytes (aclImdb v1).",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Tensor(**_BYTES),
                    "label": tfds.features.ClassLabel(names=["neg", "pos"]),
                }
            ),
            homepage="https://ai.stanford.edu/~amaas/data/sentiment/",
        )

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


class AanRelease(tfds.core.GeneratorBasedBuilder):
    """AAN document pairs read from LRA's TSVs; ``text1``, ``text2`` (n,) uint8 bytes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Copy new_aan_pairs.*.tsv of {AAN.url} into manual_dir."
    code_path = tfds.core.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="ACL Anthology Network document pairs of the Long Range Arena.",
            features=tfds.features.FeaturesDict(
                {
                    "text1": tfds.features.Tensor(**_BYTES),
                    "text2": tfds.features.Tensor(**_BYTES),
                    "label": tfds.features.ClassLabel(num_classes=2),
                }
            ),
            homepage="https://github.com/google-research/long-range-arena",
        )

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


@register_dataset("imdb")
def imdb(
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = False,
    max_len: int = 4096,
):
    """LRA Text: IMDB reviews as byte tokens, built from the downloaded release on first use.

    Args:
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        manual_dir: folder with ``aclImdb_v1.tar.gz`` or ``aclImdb/``; None means
            ``<data_dir>/manual/imdb``.
        download: if the dataset is not prepared and manual_dir lacks the files, download the
            archive (84 MB) into manual_dir; False never touches the network.
        max_len: l, bytes kept from the start of each review.
    """
    data_dir = resolve_data_dir(data_dir)
    builder = prepare(
        ImdbRelease, IMDB, data_dir=data_dir, manual_dir=manual_dir, download=download
    )
    fn = functools.partial(_imdb_example, max_len=max_len)
    stored = builder.as_data_source()
    sources = {split: MappedSource(stored[split], fn) for split in ("train", "test")}
    spec = DatasetSpec(
        name="imdb",
        seq_len=max_len,
        num_classes=2,
        d_input=None,
        vocab_size=VOCAB_SIZE,
        splits=SPLITS,
    )
    return Dataset(spec=spec, sources={**sources, "validation": sources["test"]})


@register_dataset("aan")
def aan(
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = False,
    max_len: int = 4000,
):
    """LRA Retrieval: pairs of AAN papers as byte tokens (a two-tower, ``paired`` dataset).

    Args:
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        manual_dir: folder with ``new_aan_pairs.{train,eval,test}.tsv``; None means
            ``<data_dir>/manual/aan``.
        download: if the dataset is not prepared and manual_dir lacks the files, download LRA's
            whole release (~7 GB, its only source) and extract the three TSVs into manual_dir;
            False never touches the network.
        max_len: l, bytes kept from the start of each document.
    """
    data_dir = resolve_data_dir(data_dir)
    builder = prepare(AanRelease, AAN, data_dir=data_dir, manual_dir=manual_dir, download=download)
    fn = functools.partial(_aan_example, max_len=max_len)
    spec = DatasetSpec(
        name="aan",
        seq_len=max_len,
        num_classes=2,
        d_input=None,
        vocab_size=VOCAB_SIZE,
        splits=SPLITS,
        paired=True,
    )
    stored = builder.as_data_source()
    return Dataset(spec=spec, sources={s: MappedSource(stored[s], fn) for s in SPLITS})
