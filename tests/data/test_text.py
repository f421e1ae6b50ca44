"""LRA Text (IMDB) and Retrieval (AAN) built from tiny fake releases in their real formats."""

import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssm.data import get_dataset
from ssm.data.manual import MissingDataError

# (split, label folder, file name, bytes): 10 reviews; unicode, a 0xff byte, one long review.
REVIEWS = [
    ("train", "pos", "0_9.txt", b"A great film.<br /><br />Loved it."),
    ("train", "pos", "1_8.txt", "Caf\u00e9 sc\u00e8ne, tr\u00e8s bien".encode()),
    ("train", "pos", "2_10.txt", b"x" * 5000),
    ("train", "neg", "0_1.txt", b"Awful \xff bytes"),
    ("train", "neg", "1_2.txt", b"Bad."),
    ("test", "pos", "0_7.txt", b"Good enough"),
    ("test", "pos", "1_9.txt", b"Superb acting"),
    ("test", "neg", "0_3.txt", b"Dull"),
    ("test", "neg", "1_4.txt", b"Too long and too slow"),
    ("test", "neg", "2_2.txt", b"No"),
]
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
LRA_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
# (label, text1, text2) per LRA file: 6 pairs; quotes are literal characters (no CSV quoting).
PAIRS = {
    "train": [("1", b"paper one cites", b'the "second" paper'), ("0.0", b"a", b"b" * 4100)],
    "eval": [("0", b"unrelated text", b"other text"), ("1.0", b"\xc3\xa9t\xc3\xa9", b"summer")],
    "test": [("1", b"x", b"y"), ("0", b"", b"empty first document")],
}


# Builds and reads in a fresh interpreter where `import tensorflow` fails as if not installed.
NO_TENSORFLOW_BODY = """
from ssm.data import get_dataset

imdb, aan = (get_dataset(name, data_dir=sys.argv[1]) for name in ("imdb", "aan"))
splits = ("train", "validation", "test")
read = lambda source: [source[i] for i in range(len(source))]
result["imdb"] = [sorted(e["inputs"].tolist() for e in read(imdb.source(s))) for s in splits]
result["aan_shapes"] = [
    sorted(list(e["inputs"].shape) for e in read(aan.source(s))) for s in splits
]
"""


def dumps(examples: list[dict]) -> list[dict]:
    """Examples with their arrays as lists, to compare with ==."""
    return [{key: np.asarray(value).tolist() for key, value in e.items()} for e in examples]


def write_imdb(root, *, archive: bool) -> None:
    """The aclImdb v1 layout (plus an unlabeled review that must be ignored)."""
    reviews = [*REVIEWS, ("train", "unsup", "0_0.txt", b"unlabeled")]
    folder = root / "extracted" if archive else root
    for split, label, name, text in reviews:
        path = folder / "aclImdb" / split / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    if archive:
        with tarfile.open(root / "aclImdb_v1.tar.gz", "w:gz") as tar:
            tar.add(folder / "aclImdb", arcname="aclImdb")


def write_aan(root) -> None:
    """LRA's new_aan_pairs.{train,eval,test}.tsv: label, id1, id2, text1, text2."""
    root.mkdir(parents=True, exist_ok=True)
    for name, pairs in PAIRS.items():
        lines = [
            b"\t".join([label.encode(), f"id{i}a".encode(), f"id{i}b".encode(), t1, t2])
            for i, (label, t1, t2) in enumerate(pairs)
        ]
        (root / f"new_aan_pairs.{name}.tsv").write_bytes(b"\n".join(lines) + b"\n")


def expected_tokens(text: bytes, max_len: int) -> list[int]:
    return [b + 1 for b in text[:max_len]]


def read_all(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def imdb_split(dataset, split: str) -> list[tuple[list[int], int, int]]:
    return sorted(
        (e["inputs"].tolist(), int(e["length"]), int(e["label"]))
        for e in read_all(dataset.source(split))
    )


def expected_imdb(split: str, max_len: int) -> list[tuple[list[int], int, int]]:
    return sorted(
        (expected_tokens(text, max_len), min(len(text), max_len), int(label == "pos"))
        for s, label, _, text in REVIEWS
        if s == split
    )


@pytest.fixture(scope="module")
def imdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb")
    write_imdb(root / "raw", archive=False)
    return get_dataset("imdb", data_dir=str(root / "tfds"), manual_dir=str(root / "raw"))


@pytest.fixture(scope="module")
def aan(tmp_path_factory):
    root = tmp_path_factory.mktemp("aan")
    write_aan(root / "raw")
    return get_dataset("aan", data_dir=str(root / "tfds"), manual_dir=str(root / "raw"))


def test_imdb_spec_is_byte_tokens_up_to_4096_with_test_as_validation(imdb):
    spec = imdb.spec
    assert (spec.name, spec.seq_len, spec.num_classes) == ("imdb", 4096, 2)
    assert (spec.d_input, spec.vocab_size, spec.paired) == (None, 257, False)
    assert spec.splits == ("train", "validation", "test")
    assert imdb.source("validation") is imdb.source("test")


def test_imdb_from_extracted_folder_round_trips_every_review_as_bytes_plus_one(imdb):
    for split in ("train", "test"):
        assert imdb_split(imdb, split) == expected_imdb(split, 4096)
    example = imdb.source("train")[0]
    assert example["inputs"].dtype == np.int32 and example["inputs"].ndim == 1
    assert example["length"] == len(example["inputs"])


def test_imdb_keeps_byte_255_as_token_256_and_cuts_long_reviews(imdb):
    tokens = [t for tokens, _, _ in imdb_split(imdb, "train") for t in tokens]
    assert max(tokens) == 256 and min(tokens) >= 1
    assert max(length for _, length, _ in imdb_split(imdb, "train")) == 4096


def test_imdb_from_archive_equals_expected_and_max_len_cuts_at_read(tmp_path):
    write_imdb(tmp_path / "raw", archive=True)
    (tmp_path / "raw" / "extracted").rename(tmp_path / "elsewhere")
    dataset = get_dataset(
        "imdb", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"), max_len=8
    )
    assert dataset.spec.seq_len == 8
    for split in ("train", "test"):
        assert imdb_split(dataset, split) == expected_imdb(split, 8)


def test_prepared_dataset_reads_without_the_downloaded_files(tmp_path):
    write_imdb(tmp_path / "raw", archive=True)
    get_dataset("imdb", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"))
    (tmp_path / "raw" / "aclImdb_v1.tar.gz").unlink()
    dataset = get_dataset("imdb", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"))
    assert imdb_split(dataset, "test") == expected_imdb("test", 4096)


def test_aan_examples_are_two_documents_as_2_by_l_tokens_with_two_lengths(aan):
    spec = aan.spec
    assert (spec.name, spec.seq_len, spec.num_classes, spec.paired) == ("aan", 4000, 2, True)
    assert (spec.d_input, spec.vocab_size) == (None, 257)
    for split, name in (("train", "train"), ("validation", "eval"), ("test", "test")):
        got = sorted(
            (e["inputs"].tolist(), e["length"].tolist(), int(e["label"]))
            for e in read_all(aan.source(split))
        )
        expected = []
        for label, t1, t2 in PAIRS[name]:
            docs = [expected_tokens(t, 4000) for t in (t1, t2)]
            width = max(map(len, docs))
            rows = [doc + [0] * (width - len(doc)) for doc in docs]
            expected.append((rows, [len(d) for d in docs], int(float(label))))
        assert got == sorted(expected), split
    example = aan.source("train")[0]
    assert example["inputs"].dtype == np.int32 and example["length"].dtype == np.int32


def test_aan_max_len_cuts_each_document(tmp_path):
    write_aan(tmp_path / "raw")
    dataset = get_dataset(
        "aan", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"), max_len=3
    )
    lengths = sorted(e["length"].tolist() for e in read_all(dataset.source("train")))
    assert lengths == [[1, 3], [3, 3]]
    assert all(e["inputs"].shape[1] <= 3 for e in read_all(dataset.source("train")))


def test_aan_malformed_line_names_file_and_line(tmp_path):
    write_aan(tmp_path / "raw")
    (tmp_path / "raw" / "new_aan_pairs.eval.tsv").write_bytes(b"1\tonly three\tfields\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs\.eval\.tsv:1: expected 5 tab-separated"):
        get_dataset("aan", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"))


@pytest.mark.parametrize(
    "name, files, url",
    [
        (
            "imdb",
            ["aclImdb_v1.tar.gz", "aclImdb/train/pos"],
            "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        ),
        (
            "aan",
            ["new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv"],
            "https://storage.googleapis.com/long-range-arena/lra_release.gz",
        ),
    ],
)
def test_missing_release_error_names_files_manual_dir_and_url(
    tmp_path, fake_download, name, files, url
):
    calls = fake_download({})
    with pytest.raises(FileNotFoundError) as error:
        get_dataset(name, data_dir=str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, MissingDataError) and "\n" not in message
    assert f"manual_dir {tmp_path / 'manual' / name};" in message
    assert all(file in message for file in files) and url in message
    assert "set dataset.download=true" in message and calls == []  # offline by default
    assert not (tmp_path / f"{name}_release").exists()


def imdb_release(root) -> dict[str, Path]:
    """URL -> local file of a fake IMDB release."""
    write_imdb(root, archive=True)
    return {IMDB_URL: root / "aclImdb_v1.tar.gz"}


def lra_release(root) -> dict[str, Path]:
    """URL -> local file of a fake LRA release: the AAN TSVs among other tasks' files."""
    write_aan(root / "lra_release" / "lra_release" / "tsv_data")
    listops = root / "lra_release" / "lra_release" / "listops-1000"
    listops.mkdir()
    (listops / "basic_train.tsv").write_text("Source\tTarget\n")
    with tarfile.open(root / "lra_release.gz", "w:gz") as tar:
        tar.add(root / "lra_release", arcname="lra_release")
    return {LRA_URL: root / "lra_release.gz"}


@pytest.mark.parametrize(
    "name, write, urls, stored",
    [
        ("imdb", imdb_release, [IMDB_URL], ["aclImdb_v1.tar.gz"]),
        (
            "aan",
            lra_release,
            [LRA_URL],
            [f"new_aan_pairs.{s}.tsv" for s in ("eval", "test", "train")],
        ),
    ],
)
def test_download_fetches_the_missing_release_into_manual_dir_once(
    tmp_path, request, fake_download, name, write, urls, stored
):
    calls = fake_download(write(tmp_path / "server"))
    data_dir, manual_dir = str(tmp_path / "tfds"), tmp_path / "manual"
    downloaded = get_dataset(name, data_dir=data_dir, manual_dir=str(manual_dir), download=True)
    assert calls == [urls]
    assert sorted(p.name for p in manual_dir.iterdir()) == stored
    by_hand = request.getfixturevalue(name)  # built from the same files put there by hand
    for split in ("train", "validation", "test"):
        assert dumps(read_all(downloaded.source(split))) == dumps(read_all(by_hand.source(split)))
    for path in manual_dir.iterdir():  # prepared: no download even without the files
        path.unlink()
    get_dataset(name, data_dir=data_dir, manual_dir=str(manual_dir), download=True)
    assert len(calls) == 1


def test_download_is_skipped_when_manual_dir_has_the_files(tmp_path, fake_download):
    calls = fake_download({})
    write_aan(tmp_path / "raw")
    dataset = get_dataset(
        "aan", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"), download=True
    )
    assert calls == [] and len(dataset.source("test")) == 2


def test_text_builders_round_trip_with_tensorflow_unimportable(tmp_path, run_without_tensorflow):
    write_imdb(tmp_path / "manual" / "imdb", archive=False)
    write_aan(tmp_path / "manual" / "aan")
    report = run_without_tensorflow(NO_TENSORFLOW_BODY, str(tmp_path))
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    stored = ("train", "test", "test")  # validation is IMDB's test set
    assert report["imdb"] == [sorted(t for t, _, _ in expected_imdb(s, 4096)) for s in stored]
    widths = [
        sorted([2, min(max(len(t1), len(t2)), 4000)] for _, t1, t2 in PAIRS[name])
        for name in ("train", "eval", "test")
    ]
    assert report["aan_shapes"] == widths
    written = {p.name.split("-")[0] for p in tmp_path.rglob("*.array_record-*")}
    assert written == {"imdb_release", "aan_release"}
