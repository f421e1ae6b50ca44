"""Byte-level text corpora for language modelling: ``bytes`` (a local folder or file), ``enwik8``
and ``wikitext103`` (downloaded releases), each read as raw bytes.

Token = byte value (vocabulary 256, no shift); the spec is ``byte_level`` so language-model bits
per token are bits per byte. Examples are non-overlapping windows of a split's byte stream:
``inputs`` (seq_len,) int32 bytes, the last partial window zero-padded, and ``length`` its valid
bytes; there is no ``label`` (the language-model objectives take targets from the inputs). Each
source also has ``stream()``, the split's whole (n,) uint8 stream (e.g. for a unigram baseline).

Corpus (``path``): a folder means every regular file under it, recursively, skipping hidden files
and folders (names starting with "."); a file means that file. ``path=None`` is the offline
default present on every machine: the ``*.py`` files of Python's standard library
(``sysconfig.get_paths()["stdlib"]``), recursively, skipping ``site-packages``,
``dist-packages`` and hidden folders. Files are sorted by their relative POSIX path.

Split, by file: the sorted files are permuted by ``numpy.random.default_rng(split_seed)``; the
first ``max(1, round(5%))`` go to validation, the next as many to test, the rest to train. Within a
split, files are concatenated in sorted order, each followed by one b"\\n". With fewer than 3
files, the concatenated stream (same rule) is cut by bytes instead: the first 90% train, then 5%
validation, then 5% test (each at least 1 byte).

``packed=True``: each window also has ``segment_ids`` (seq_len,) int32, the index in its split
of the file each byte is from (its separator included), found from the files' sizes; a window
across a file boundary is then a packed row, whose files the layers and the causal_lm targets
keep apart.

Size of the default on CPython 3.11.7 (split_seed 0): 1,790 files, 31.5 MB; train 1,610 files /
28.1 MB, validation 90 / 1.8 MB, test 90 / 1.6 MB (55k / 3.5k / 3.1k windows of 512). Building it
once takes about 1 s on a CPU.

Each corpus is its own TFDS builder config, named from a sha1 fingerprint of the absolute path
and every file's relative path, size and mtime, plus the seed (``stdlib_py311_<sha>_seed0``,
``path_<name>_<sha>_seed0``), so an edited corpus is rebuilt, never read stale from the cache.
Streams are stored as blocks of 64 KiB.

``enwik8``: the first 10**8 bytes of an English Wikipedia XML dump (Hutter Prize), the file
``enwik8`` of ``enwik8.zip``. Its standard split, by bytes: the first 90M train, the next 5M
validation, the last 5M test; it is the 90/5/5 cut above (no separator added), so a file of
another size (a test's fake) is cut in the same proportions.

``wikitext103``: WikiText-103's raw release (``wikitext-103-raw-v1.zip``): the splits are its
``wiki.{train,valid,test}.raw`` files (Merity et al.'s split: ~0.5 GB / ~1 MB / ~1 MB), read as
their UTF-8 bytes. Tokenizer: bytes, like every dataset here (vocabulary 256, ``byte_level``),
not the release's word-level vocabulary of 267,735 words, so the metric is bits per byte, and
word-level perplexities from the literature compare only after converting per word.

Both are read from ``manual_dir`` (the archive as downloaded, or the files extracted from it), and
downloaded there first only with ``download=True`` (see ``ssm.data.manual``); each is built once.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ssm.config import NonNegativeInt, PositiveInt
from ssm.data.build import Builder, prepare_builder
from ssm.data.manual import (
    MissingDataError,
    Release,
    ReleaseOptions,
    RemoteFile,
    archive_release,
    release_builder,
)
from ssm.data.registry import SPLITS, Dataset, DatasetSpec, register_dataset

VOCAB_SIZE = 256  # token = byte value
BLOCK_BYTES = 65_536  # bytes per stored example
HELD_OUT = 0.05  # fraction of files (or bytes) in each of validation and test
SEPARATOR = b"\n"  # follows every file in a split's stream
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages"})  # for the stdlib default

_ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8 = Release(
    name="enwik8",
    title="enwik8 (Hutter Prize, 100 MB of Wikipedia XML)",
    url=_ENWIK8_URL,
    layouts=(("enwik8.zip",), ("enwik8",)),
    hint="put the archive (or the file enwik8 extracted from it) there",
    files=(RemoteFile(_ENWIK8_URL),),
)
WIKITEXT103_FILES = {
    "train": "wiki.train.raw",
    "validation": "wiki.valid.raw",
    "test": "wiki.test.raw",
}
WIKITEXT103 = archive_release(
    "wikitext103",
    "WikiText-103 (raw, v1)",
    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-raw-v1.zip",
    folder="wikitext-103-raw",
    contents=tuple(WIKITEXT103_FILES.values()),
)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The files of a corpus: ``root`` (a folder, or the file itself) and ``files``, sorted
    relative POSIX paths under it (``"."`` for a single-file corpus)."""

    root: str
    files: tuple[str, ...]

    def paths(self) -> list[Path]:
        root = Path(self.root)
        return [root if rel == "." else root / rel for rel in self.files]

    def fingerprint(self) -> str:
        """Short sha1 of the absolute root and each file's relative path, size and mtime."""
        stats = [(rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in self._pairs()]
        payload = json.dumps([os.path.abspath(self.root), stats]).encode()
        return hashlib.sha1(payload).hexdigest()[:10]

    def stream_bytes(self) -> int:
        """Bytes of all files with their separators."""
        return sum(p.stat().st_size + len(SEPARATOR) for p in self.paths())

    def _pairs(self):
        return zip(self.files, self.paths(), strict=True)


def _walk(root: Path, suffix: str = "", skipped: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Sorted relative POSIX paths of the regular files under ``root`` ending in ``suffix``,
    skipping hidden names and folders named in ``skipped``."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skipped]
        for name in names:
            path = Path(folder) / name
            if not name.startswith(".") and name.endswith(suffix) and path.is_file():
                files.append(path.relative_to(root).as_posix())
    return tuple(sorted(files))


def stdlib_corpus() -> Corpus:
    """The ``*.py`` files of this interpreter's standard library (without site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return Corpus(str(root), _walk(root, ".py", _SKIPPED_DIRS))


def path_corpus(path: str) -> Corpus:
    """Every non-hidden regular file under folder ``path``, or the single file ``path``."""
    root = Path(path).expanduser()
    if root.is_file():
        return Corpus(str(root), (".",))
    if not root.is_dir():
        raise ValueError(f"bytes corpus path {str(root)!r} does not exist; give a folder or a file")
    files = _walk(root)
    if not files:
        raise ValueError(
            f"bytes corpus folder {str(root)!r} has no files (hidden files and folders are skipped)"
        )
    return Corpus(str(root), files)


def split_files(n_files: int, split_seed: int) -> dict[str, np.ndarray] | None:
    """Indices (sorted) of the files of each split, or None when ``n_files < 3`` (cut by bytes)."""
    if n_files < 3:
        return None
    held = max(1, round(n_files * HELD_OUT))
    order = np.random.default_rng(split_seed).permutation(n_files)
    parts = (order[2 * held :], order[:held], order[held : 2 * held])
    return {split: np.sort(part) for split, part in zip(SPLITS, parts, strict=True)}


def byte_cuts(n_bytes: int) -> dict[str, tuple[int, int]]:
    """[start, stop) of each split in a stream of ``n_bytes`` (>= 3) cut 90/5/5 by bytes."""
    held = max(1, int(n_bytes * HELD_OUT))
    train = n_bytes - 2 * held
    cuts = (0, train, train + held, n_bytes)
    return {split: (cuts[i], cuts[i + 1]) for i, split in enumerate(SPLITS)}


def document_starts(corpus: Corpus, split_seed: int) -> dict[str, np.ndarray]:
    """Split name -> (n_docs,) int64 offsets in its stream where each file (document) starts,
    from the files' sizes (the split rule of the module docstring; a cut by bytes starts its
    split inside a file, which is then its first document)."""
    sizes = np.array([p.stat().st_size + len(SEPARATOR) for p in corpus.paths()], np.int64)
    parts = split_files(len(sizes), split_seed)
    if parts is not None:
        return {split: np.cumsum(sizes[rows]) - sizes[rows] for split, rows in parts.items()}
    ends = np.cumsum(sizes)
    starts = ends - sizes
    return {
        split: np.maximum(starts[(ends > a) & (starts < b)], a) - a
        for split, (a, b) in byte_cuts(int(ends[-1])).items()
    }


def _read_stream(paths: list[Path]) -> bytes:
    return b"".join(path.read_bytes() + SEPARATOR for path in paths)


def split_streams(corpus: Corpus, split_seed: int) -> dict[str, bytes]:
    """Split name -> its byte stream (the split rule of the module docstring)."""
    paths = corpus.paths()
    parts = split_files(len(paths), split_seed)
    if parts is None:
        stream = _read_stream(paths)
        return {split: stream[a:b] for split, (a, b) in byte_cuts(len(stream)).items()}
    return {split: _read_stream([paths[i] for i in rows]) for split, rows in parts.items()}


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
    """One corpus and split seed; the name carries their fingerprint (see ``config_for``)."""

    corpus: Corpus = dataclasses.field(default=Corpus("", ()), repr=False)
    split_seed: int = 0


def config_for(corpus: Corpus, split_seed: int, stdlib: bool) -> CorpusConfig:
    """The builder config of ``corpus``, named ``stdlib_py311_<sha>_seed0`` or
    ``path_<name>_<sha>_seed0``."""
    if stdlib:
        prefix = f"stdlib_py{sys.version_info.major}{sys.version_info.minor}"
    else:
        label = re.sub(r"[^a-z0-9]+", "_", Path(corpus.root).name.lower()).strip("_")[:24]
        prefix = f"path_{label or 'root'}"
    name = f"{prefix}_{corpus.fingerprint()}_seed{split_seed}"
    return CorpusConfig(name=name, corpus=corpus, split_seed=split_seed)


class ByteCorpus(Builder):
    """TFDS builder of a corpus's split streams, stored in order as ``bytes`` (<= 64 KiB,) uint8
    blocks."""

    DISABLE_SHUFFLING = True

    def _features(self):
        bytes_ = tfds.features.Tensor(
            shape=(None,), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
        )
        return {"bytes": bytes_}

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(s) for split, s in self._streams(dl_manager).items()}

    def _streams(self, dl_manager) -> dict[str, bytes]:
        """Split name -> its byte stream."""
        config = self.builder_config
        return split_streams(config.corpus, config.split_seed)

    def _generate_examples(self, stream: bytes):
        """Yields (block index, example) of consecutive BLOCK_BYTES slices of ``stream``."""
        for index, start in enumerate(range(0, len(stream), BLOCK_BYTES)):
            block = np.frombuffer(stream[start : start + BLOCK_BYTES], dtype=np.uint8)
            yield index, {"bytes": block}


def _zip_member(archive: Path, name: str) -> bytes:
    """The bytes of the member of zip ``archive`` whose path is ``name`` or ends with ``/name``.

    Raises:
        MissingDataError: there is no such member.
    """
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if not info.is_dir() and (info.filename == name or info.filename.endswith("/" + name)):
                return zf.read(info)
    raise MissingDataError(f"{archive} lacks {name}")


class Enwik8(ByteCorpus):
    """enwik8 read from ``enwik8.zip`` or ``enwik8`` in manual_dir, cut 90/5/5 by bytes."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {ENWIK8.url} into manual_dir."
    DESCRIPTION = "enwik8: the first 10**8 bytes of an English Wikipedia dump (Hutter Prize)."
    HOMEPAGE = "http://mattmahoney.net/dc/textdata.html"

    def _streams(self, dl_manager) -> dict[str, bytes]:
        root = Path(dl_manager.manual_dir)
        if ENWIK8.layout(root) == 0:
            data = _zip_member(root / "enwik8.zip", "enwik8")
        else:
            data = (root / "enwik8").read_bytes()
        return {split: data[a:b] for split, (a, b) in byte_cuts(len(data)).items()}


class Wikitext103(ByteCorpus):
    """WikiText-103 (raw) read from ``wikitext-103-raw-v1.zip`` or ``wikitext-103-raw/``."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Download {WIKITEXT103.url} into manual_dir."
    DESCRIPTION = "WikiText-103 (raw), Merity et al. 2016, as UTF-8 bytes."
    HOMEPAGE = "https://arxiv.org/abs/1609.07843"

    def _streams(self, dl_manager) -> dict[str, bytes]:
        root = Path(dl_manager.manual_dir)
        if WIKITEXT103.layout(root) == 0:
            archive = root / "wikitext-103-raw-v1.zip"
            return {s: _zip_member(archive, name) for s, name in WIKITEXT103_FILES.items()}
        folder = root / "wikitext-103-raw"
        return {s: (folder / name).read_bytes() for s, name in WIKITEXT103_FILES.items()}


class ByteWindows:
    """Random-access non-overlapping windows of a split's byte stream.

    ``source[i]`` = {"inputs": (seq_len,) int32 bytes, zero-padded past the end, "length": int},
    and with ``starts`` "segment_ids": (seq_len,) int32, the document each byte belongs to (a
    window across a document boundary is a packed row; padding is in the last document);
    ``len(source) = ceil(len(stream) / seq_len)``. The stream is read from the stored blocks on
    first use; pickling keeps the block source (paths, not open handles) and drops the stream.

    Args:
        blocks: random-access stored blocks (examples ``{"bytes": (n,) uint8}``), in order.
        seq_len: window length.
        starts: optional (n_docs,) increasing offsets in the stream where each document starts.
    """

    def __init__(self, blocks, seq_len: int, starts: np.ndarray | None = None):
        self.blocks, self.seq_len, self.starts = blocks, seq_len, starts
        self._stream: np.ndarray | None = None

    def stream(self) -> np.ndarray:
        """The split's whole byte stream, (n,) uint8."""
        if self._stream is None:
            blocks = self.blocks.__getitems__(list(range(len(self.blocks))))
            parts = [np.asarray(b["bytes"], dtype=np.uint8) for b in blocks]
            self._stream = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        return self._stream

    def __len__(self) -> int:
        return math.ceil(len(self.stream()) / self.seq_len)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"window {index} out of range for {n} windows")
        start = (index % n) * self.seq_len
        window = self.stream()[start : start + self.seq_len]
        inputs = np.zeros(self.seq_len, dtype=np.int32)
        inputs[: len(window)] = window
        example = {"inputs": inputs, "length": len(window)}
        if self.starts is not None:
            positions = start + np.arange(self.seq_len)
            documents = np.searchsorted(self.starts, positions, side="right") - 1
            example["segment_ids"] = documents.astype(np.int32)
        return example

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}


@register_dataset("bytes")
def bytes_corpus(
    *,
    path: str | None = None,
    seq_len: PositiveInt = 512,
    split_seed: NonNegativeInt = 0,
    data_dir: str | None = None,
    packed: bool = False,
) -> Dataset:
    """A byte-level corpus as windows of seq_len bytes, built under ``data_dir`` on first use.

    Args:
        path: a folder (every non-hidden file under it) or one file; None means the ``*.py``
            files of Python's standard library.
        seq_len: l, bytes per window.
        split_seed: seed of the by-file train/validation/test split.
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        packed: each window also gives ``segment_ids``, the file each byte is from (index in
            its split), so a window across files is a packed row (see ``ByteWindows``).
    """
    corpus = stdlib_corpus() if path is None else path_corpus(path)
    n_bytes = corpus.stream_bytes()
    if len(corpus.files) < 3 and n_bytes < 3:
        raise ValueError(
            f"bytes corpus {corpus.root!r} has {n_bytes} bytes (with separators); "
            "need at least 3 to split it"
        )
    config = config_for(corpus, split_seed, stdlib=path is None)
    builder = prepare_builder(ByteCorpus, data_dir=data_dir, config=config)
    starts = document_starts(corpus, split_seed) if packed else None
    return _windows("bytes", builder, seq_len, starts)


def _windows(
    name: str, builder: ByteCorpus, seq_len: int, starts: dict[str, np.ndarray] | None = None
) -> Dataset:
    """The byte-level Dataset of a prepared corpus builder, in windows of ``seq_len``, packed
    with each split's document ``starts`` if given."""
    spec = DatasetSpec(
        name, seq_len=seq_len, num_classes=VOCAB_SIZE, vocab_size=VOCAB_SIZE, byte_level=True
    )
    sources = {
        split: ByteWindows(
            builder.as_data_source(split=split), seq_len, None if starts is None else starts[split]
        )
        for split in SPLITS
    }
    return Dataset(spec=spec, sources=sources)


@register_dataset("enwik8", shared=ReleaseOptions)
def enwik8(*, seq_len: PositiveInt = 512, **options) -> Dataset:
    """enwik8 as windows of seq_len bytes (90M / 5M / 5M), built from the release on first use.

    ``manual_dir`` holds ``enwik8.zip`` or ``enwik8`` (default ``<data_dir>/manual/enwik8``);
    ``download`` fetches the archive (36 MB).

    Args:
        seq_len: l, bytes per window.
    """
    builder = release_builder(Enwik8, ENWIK8, ReleaseOptions(**options))
    return _windows("enwik8", builder, seq_len)


@register_dataset("wikitext103", shared=ReleaseOptions)
def wikitext103(*, seq_len: PositiveInt = 512, **options) -> Dataset:
    """WikiText-103 (raw) as windows of seq_len UTF-8 bytes, built from the release on first use.

    ``manual_dir`` holds ``wikitext-103-raw-v1.zip`` or ``wikitext-103-raw/wiki.*.raw``
    (default ``<data_dir>/manual/wikitext103``); ``download`` fetches the archive (~0.2 GB).

    Args:
        seq_len: l, bytes per window.
    """
    builder = release_builder(Wikitext103, WIKITEXT103, ReleaseOptions(**options))
    return _windows("wikitext103", builder, seq_len)
