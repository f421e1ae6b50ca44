"""The byte-level text corpora: ``bytes`` (windows, the by-file split, caching by fingerprint),
and ``enwik8`` and ``wikitext103`` read from fake releases (split boundaries, archive and extracted
layouts, missing-data errors, download on request only)."""

import dataclasses
import math
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ssm.data import Loader, dataset_options_class, get_dataset
from ssm.data import corpus as corpus_module
from ssm.data.corpus import ENWIK8, SEPARATOR, WIKITEXT103, byte_cuts, stdlib_corpus
from ssm.data.manual import MissingDataError

SPLITS = ("train", "validation", "test")
N_FILES = 20

# Builds a tiny corpus and reads every window in a fresh interpreter where tensorflow is blocked.
NO_TENSORFLOW_BODY = """
from ssm.data import get_dataset

dataset = get_dataset("bytes", path=sys.argv[2], seq_len=16, data_dir=sys.argv[1])
result["windows"] = {s: len(dataset.source(s)) for s in dataset.spec.splits}
result["bytes"] = sum(
    int(e["length"]) for s in dataset.spec.splits
    for e in (dataset.source(s)[i] for i in range(len(dataset.source(s))))
)
"""


def marker(i: int) -> bytes:
    return f"<file{i:02d}>".encode()


def contents(i: int) -> bytes:
    """File i's bytes: a unique marker, then i-dependent text and non-ASCII bytes (0x00..0xff)."""
    return marker(i) + b"text " * i + bytes([i, 255 - i, 0]) + "\u00e9".encode()


def write_corpus(root: Path) -> dict[str, bytes]:
    """N_FILES files in nested folders plus hidden ones that must be skipped; relpath -> bytes."""
    files = {}
    for i in range(N_FILES):
        rel = f"{'abc'[i % 3]}/{i % 2}/doc{i:02d}.txt" if i % 4 else f"top{i:02d}"
        files[rel] = contents(i)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / ".hidden").write_bytes(b"<hidden-file>")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"<hidden-folder>")
    return files


def windows(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def members(stream: bytes) -> set[int]:
    """The files whose marker is in ``stream``."""
    return {i for i in range(N_FILES) if marker(i) in stream}


def split_members(dataset) -> dict[str, set[int]]:
    return {s: members(dataset.source(s).stream().tobytes()) for s in SPLITS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def dataset(corpus, data_dir):
    """The corpus in windows of 7, stored in blocks of 16 bytes so each split has many blocks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(corpus_module, "BLOCK_BYTES", 16)
        dataset = get_dataset("bytes", path=str(corpus[0]), seq_len=7, data_dir=data_dir)
        assert len(dataset.source("train").blocks) > 20
    return dataset


def test_windows_of_every_split_concatenate_exactly_to_its_stream(dataset):
    spec = dataset.spec
    assert (spec.seq_len, spec.vocab_size, spec.num_classes, spec.byte_level) == (7, 256, 256, True)
    for split in SPLITS:
        source = dataset.source(split)
        stream = source.stream()
        assert stream.dtype == np.uint8 and stream.ndim == 1 and len(stream) > 0
        examples = windows(source)
        assert len(source) == math.ceil(len(stream) / 7)
        assert all(set(e) == {"inputs", "length"} for e in examples)
        assert all(e["inputs"].shape == (7,) and e["inputs"].dtype == np.int32 for e in examples)
        assert all(e["length"] == 7 for e in examples[:-1])
        last = examples[-1]
        assert last["length"] == len(stream) - 7 * (len(examples) - 1)
        assert not last["inputs"][last["length"] :].any()  # zero padding
        joined = np.concatenate([e["inputs"][: e["length"]] for e in examples])
        np.testing.assert_array_equal(joined, stream.astype(np.int32))
        np.testing.assert_array_equal(source[-1]["inputs"], last["inputs"])
        with pytest.raises(IndexError, match=f"out of range for {len(examples)} windows"):
            source[len(examples)]


def test_every_file_lands_in_exactly_one_split_sorted_with_separators(dataset, corpus):
    _, files = corpus
    by_index = {i: rel for rel, data in files.items() for i in members(data)}
    parts = split_members(dataset)
    assert [len(parts[s]) for s in SPLITS] == [N_FILES - 2, 1, 1]  # 5% of 20 files each
    assert set().union(*parts.values()) == set(range(N_FILES))
    assert sum(len(p) for p in parts.values()) == N_FILES  # disjoint
    for split, indices in parts.items():
        rels = sorted(by_index[i] for i in indices)
        expected = b"".join(files[rel] + SEPARATOR for rel in rels)
        assert dataset.source(split).stream().tobytes() == expected, split
    everything = b"".join(dataset.source(s).stream().tobytes() for s in SPLITS)
    assert b"<hidden" not in everything


def test_same_seed_gives_the_same_split_and_another_seed_a_different_one(
    dataset, corpus, data_dir, tmp_path
):
    root = str(corpus[0])
    again = get_dataset("bytes", path=root, seq_len=7, data_dir=str(tmp_path))
    assert split_members(again) == split_members(dataset)
    other = get_dataset("bytes", path=root, seq_len=7, split_seed=1, data_dir=data_dir)
    assert split_members(other) != split_members(dataset)
    configs = sorted(os.listdir(Path(data_dir) / "byte_corpus"))
    assert len(configs) == 2 and configs[0].endswith("_seed0") and configs[1].endswith("_seed1")


def test_a_single_file_is_cut_90_5_5_by_bytes(tmp_path):
    data = bytes(range(256)) * 4 + b"tail"  # 1,028 bytes; its stream is 1,029 with the separator
    (tmp_path / "one.bin").write_bytes(data)
    dataset = get_dataset(
        "bytes", path=str(tmp_path / "one.bin"), seq_len=64, data_dir=str(tmp_path / "tfds")
    )
    streams = [dataset.source(s).stream().tobytes() for s in SPLITS]
    assert [len(s) for s in streams] == [1029 - 2 * 51, 51, 51]
    assert b"".join(streams) == data + SEPARATOR
    assert len(dataset.source("train")) == math.ceil((1029 - 102) / 64)


def test_bad_path_empty_folder_and_bad_seq_len_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"bytes corpus path '.*missing' does not exist"):
        get_dataset("bytes", path=str(tmp_path / "missing"), data_dir=str(tmp_path))
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / ".hidden" / "x.txt").write_text("hidden")
    with pytest.raises(ValueError, match=r"folder '.*empty' has no files \(hidden files"):
        get_dataset("bytes", path=str(empty), data_dir=str(tmp_path))
    (tmp_path / "a.txt").write_text("x")
    for seq_len in (0, -3):
        with pytest.raises(
            ValueError, match=f"seq_len={seq_len} is not valid; valid: an integer >= 1"
        ):
            get_dataset(
                "bytes", path=str(tmp_path / "a.txt"), seq_len=seq_len, data_dir=str(tmp_path)
            )
    (tmp_path / "b.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="has 1 bytes .*need at least 3"):
        get_dataset("bytes", path=str(tmp_path / "b.txt"), data_dir=str(tmp_path))


def test_an_edited_file_gives_a_new_builder_config_not_the_stale_cache(tmp_path):
    root = tmp_path / "corpus"
    files = write_corpus(root)
    data_dir = str(tmp_path / "tfds")
    before = get_dataset("bytes", path=str(root), data_dir=data_dir)
    rel = next(iter(files))
    edited = files[rel].replace(b"<file", b"<FILE")  # same size, new content and mtime
    (root / rel).write_bytes(edited)
    stat = (root / rel).stat()
    os.utime(root / rel, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = get_dataset("bytes", path=str(root), data_dir=data_dir)
    old = b"".join(before.source(s).stream().tobytes() for s in SPLITS)
    new = b"".join(after.source(s).stream().tobytes() for s in SPLITS)
    assert files[rel] in old and edited not in old
    assert edited in new and files[rel] not in new
    configs = os.listdir(Path(data_dir) / "byte_corpus")
    assert len(configs) == 2 and all(c.startswith("path_corpus_") for c in configs)


def test_sources_pickle_without_their_stream_and_read_the_same_windows(dataset):
    source = dataset.source("validation")
    source.stream()
    restored = pickle.loads(pickle.dumps(source))
    assert restored._stream is None
    for a, b in zip(windows(source), windows(restored), strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        assert a["length"] == b["length"]


def assert_segment_ids_are_the_files(source, files: list[bytes]) -> None:
    """Each window's ``segment_ids`` is the index of the file (with its separator) each byte of
    ``source`` is from, ``files`` in stream order; padding is in the last file."""
    examples = windows(source)
    assert all(
        e["segment_ids"].shape == (7,) and e["segment_ids"].dtype == np.int32 for e in examples
    )
    sizes = [len(data) + len(SEPARATOR) for data in files]
    expected = np.repeat(np.arange(len(files)), sizes)
    joined = np.concatenate([e["segment_ids"] for e in examples])
    np.testing.assert_array_equal(joined[: len(expected)], expected)
    np.testing.assert_array_equal(joined[len(expected) :], len(files) - 1)


def test_packed_windows_carry_the_file_index_of_every_byte_and_the_loader_passes_it(
    dataset, corpus, data_dir
):
    _, files = corpus
    packed = get_dataset("bytes", path=str(corpus[0]), seq_len=7, data_dir=data_dir, packed=True)
    by_index = {i: rel for rel, data in files.items() for i in members(data)}
    for split, indices in split_members(dataset).items():
        source = packed.source(split)
        assert_segment_ids_are_the_files(
            source, [files[r] for r in sorted(by_index[i] for i in indices)]
        )
        for a, b in zip(windows(source), windows(dataset.source(split)), strict=True):
            np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert "segment_ids" not in dataset.source("train")[0]
    source = packed.source("train")
    batch = next(Loader(source, 4, seed=0, shuffle=False, pad_to=9).batches(0))
    assert batch["segment_ids"].shape == (4, 9) and batch["segment_ids"].dtype == np.int32
    np.testing.assert_array_equal(
        batch["segment_ids"][:, :7], [source[i]["segment_ids"] for i in range(4)]
    )


def test_packed_windows_of_a_corpus_cut_by_bytes_count_files_from_each_split_start(tmp_path):
    files = [b"a" * 40, b"b" * 25]  # 2 files: the 67-byte stream is cut 61 / 3 / 3
    for i, data in enumerate(files):
        (tmp_path / f"{i}.txt").write_bytes(data)
    packed = get_dataset(
        "bytes", path=str(tmp_path), seq_len=7, data_dir=str(tmp_path / "tfds"), packed=True
    )
    ids = {
        s: np.concatenate([e["segment_ids"][: e["length"]] for e in windows(packed.source(s))])
        for s in SPLITS
    }
    np.testing.assert_array_equal(ids["train"], np.repeat([0, 1], [41, 20]))
    np.testing.assert_array_equal(ids["validation"], [0, 0, 0])
    np.testing.assert_array_equal(ids["test"], [0, 0, 0])


def test_stdlib_default_lists_only_py_files_outside_site_packages():
    corpus = stdlib_corpus()
    assert len(corpus.files) > 500
    assert all(rel.endswith(".py") for rel in corpus.files)
    assert list(corpus.files) == sorted(corpus.files)
    parts = {part for rel in corpus.files for part in rel.split("/")}
    assert not parts & {"site-packages", "dist-packages"}
    assert not any(part.startswith(".") for part in parts)
    assert "os.py" in corpus.files and "json/__init__.py" in corpus.files


def test_stdlib_default_builds_offline_and_its_splits_hold_every_byte(tmp_path):
    dataset = get_dataset("bytes", data_dir=str(tmp_path))  # ~1 s: 31 MB of stdlib sources
    streams = {s: dataset.source(s).stream() for s in SPLITS}
    assert sum(len(s) for s in streams.values()) == stdlib_corpus().stream_bytes()
    assert len(streams["validation"]) > 0 and len(streams["test"]) > 0
    assert len(streams["train"]) > 10 * len(streams["test"])
    (config,) = os.listdir(tmp_path / "byte_corpus")
    assert config.startswith("stdlib_py3") and config.endswith("_seed0")
    assert dataset.source("train")[0]["inputs"].shape == (512,)


def test_options_class_is_path_seq_len_split_seed_data_dir_packed_and_size():
    fields = {f.name: f.default for f in dataclasses.fields(dataset_options_class("bytes"))}
    assert fields == {
        "path": None,
        "seq_len": 512,
        "split_seed": 0,
        "data_dir": None,
        "packed": False,
        "size": "full",
    }


def test_bytes_builds_and_reads_with_tensorflow_unimportable(tmp_path, run_without_tensorflow):
    root = tmp_path / "corpus"
    files = write_corpus(root)
    report = run_without_tensorflow(NO_TENSORFLOW_BODY, str(tmp_path / "tfds"), str(root))
    assert report["bytes"] == sum(len(data) + len(SEPARATOR) for data in files.values())
    assert all(count > 0 for count in report["windows"].values())
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    written = {p.name.split("-")[1] for p in (tmp_path / "tfds").rglob("*.array_record-*")}
    assert written == {f"{split}.array_record" for split in SPLITS}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def assert_windows_reassemble(source, seq_len: int) -> None:
    """The windows of ``source`` are its stream cut every seq_len bytes, the last zero-padded."""
    stream = source.stream()
    examples = windows(source)
    assert len(examples) == math.ceil(len(stream) / seq_len)
    assert all(e["inputs"].shape == (seq_len,) and e["inputs"].dtype == np.int32 for e in examples)
    assert all(e["length"] == seq_len for e in examples[:-1])
    assert not examples[-1]["inputs"][examples[-1]["length"] :].any()
    joined = np.concatenate([e["inputs"][: e["length"]] for e in examples])
    np.testing.assert_array_equal(joined, stream.astype(np.int32))


FAKE_ENWIK8 = np.random.default_rng(8).integers(0, 256, 4_000, dtype=np.uint8).tobytes()
# A fake WikiText-103 release: UTF-8 text with multi-byte characters, and a decoy member.
WIKITEXT = {
    "train": " = Valkyria = \n\n Senj\u014d no Valkyria 3 : caf\u00e9 \u65e5\u672c \n" * 40,
    "validation": " = Robert Boulter = \n\n \u00c9t\u00e9 , 2000 \n",
    "test": " = Homarus = \n\n lobster \u2013 \u00bd \n",
}
RAW_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
WIKITEXT_MEMBERS = {
    **{f"wikitext-103-raw/{RAW_FILES[split]}": text.encode() for split, text in WIKITEXT.items()},
    "wikitext-103-raw/wiki.test.tokens": b"decoy",
}


def test_enwik8_real_file_size_splits_exactly_90m_5m_5m_bytes():
    assert byte_cuts(10**8) == {
        "train": (0, 90_000_000),
        "validation": (90_000_000, 95_000_000),
        "test": (95_000_000, 100_000_000),
    }


@pytest.mark.parametrize("layout", ["enwik8.zip", "enwik8"])
def test_enwik8_fake_release_is_cut_90_5_5_in_order_and_windows_reassemble(
    layout, tmp_path, monkeypatch
):
    manual = tmp_path / "manual"
    if layout == "enwik8.zip":
        write_zip(manual / "enwik8.zip", {"enwik8": FAKE_ENWIK8})
    else:
        manual.mkdir()
        (manual / "enwik8").write_bytes(FAKE_ENWIK8)
    monkeypatch.setattr(corpus_module, "BLOCK_BYTES", 256)  # several stored blocks per split
    dataset = get_dataset(
        "enwik8", seq_len=64, data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)
    )
    spec = dataset.spec
    assert (spec.name, spec.seq_len, spec.vocab_size, spec.byte_level) == ("enwik8", 64, 256, True)
    streams = {split: dataset.source(split).stream().tobytes() for split in SPLITS}
    assert streams == {
        "train": FAKE_ENWIK8[:3_600],
        "validation": FAKE_ENWIK8[3_600:3_800],
        "test": FAKE_ENWIK8[3_800:],
    }
    assert len(dataset.source("train").blocks) == math.ceil(3_600 / 256)
    for split in SPLITS:
        assert_windows_reassemble(dataset.source(split), 64)


def test_enwik8_size_tiny_keeps_the_first_windows_of_each_split(tmp_path):
    manual = tmp_path / "manual"
    write_zip(manual / "enwik8.zip", {"enwik8": FAKE_ENWIK8})
    tiny = get_dataset(
        "enwik8", seq_len=8, size="tiny", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)
    )
    assert [len(tiny.source(split)) for split in SPLITS] == [64, 16, 16]
    for split, start in (("train", 0), ("validation", 3_600), ("test", 3_800)):
        window = tiny.source(split)[15]["inputs"]
        expected = np.frombuffer(FAKE_ENWIK8[start + 120 : start + 128], np.uint8)
        np.testing.assert_array_equal(window, expected.astype(np.int32))


@pytest.mark.parametrize("layout", ["archive", "extracted"])
def test_wikitext103_splits_are_the_utf8_bytes_of_its_three_raw_files(layout, tmp_path):
    manual = tmp_path / "manual"
    if layout == "archive":
        write_zip(manual / "wikitext-103-raw-v1.zip", WIKITEXT_MEMBERS)
    else:
        for name, data in WIKITEXT_MEMBERS.items():
            (manual / name).parent.mkdir(parents=True, exist_ok=True)
            (manual / name).write_bytes(data)
    dataset = get_dataset(
        "wikitext103", seq_len=32, data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)
    )
    assert (dataset.spec.vocab_size, dataset.spec.byte_level) == (256, True)
    for split in SPLITS:
        source = dataset.source(split)
        assert source.stream().tobytes() == WIKITEXT[split].encode("utf-8")
        assert_windows_reassemble(source, 32)
    first = dataset.source("validation")[0]["inputs"]
    assert list(first[23:25]) == [0xC3, 0x89]  # "\u00c9" is two tokens, its UTF-8 bytes


@pytest.mark.parametrize(
    ("name", "files"),
    [("enwik8", "enwik8.zip or enwik8"), ("wikitext103", "wikitext-103-raw-v1.zip or [")],
)
def test_missing_release_is_one_line_naming_the_file_the_url_and_manual_dir(name, files, tmp_path):
    release = {"enwik8": ENWIK8, "wikitext103": WIKITEXT103}[name]
    with pytest.raises(MissingDataError) as error:
        get_dataset(name, data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert f"expected {files}" in message and str(tmp_path / "manual" / name) in message
    assert f"download {release.url} and put the archive" in message
    assert message.endswith("or set dataset.download=true to download it there")


def test_enwik8_download_true_fetches_the_zip_into_manual_dir_once(tmp_path, fake_download):
    served = write_zip(tmp_path / "served.zip", {"enwik8": FAKE_ENWIK8})
    calls = fake_download({ENWIK8.url: served})
    data_dir = str(tmp_path / "tfds")
    dataset = get_dataset("enwik8", data_dir=data_dir, download=True)
    assert calls == [[ENWIK8.url]]
    assert (Path(data_dir) / "manual" / "enwik8" / "enwik8.zip").read_bytes() == served.read_bytes()
    assert dataset.source("test").stream().tobytes() == FAKE_ENWIK8[3_800:]
    get_dataset("enwik8", data_dir=data_dir, download=True)
    assert calls == [[ENWIK8.url]]  # prepared: no second download


def test_enwik8_and_wikitext103_options_are_seq_len_the_release_options_and_size():
    for name in ("enwik8", "wikitext103"):
        fields = {f.name: f.default for f in dataclasses.fields(dataset_options_class(name))}
        assert fields == {
            "seq_len": 512,
            "data_dir": None,
            "manual_dir": None,
            "download": False,
            "size": "full",
        }
