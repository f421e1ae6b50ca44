"""Speech Commands (SC10, SC35) built from a tiny fake v0.02 release in its real folder layout."""

import shutil
import tarfile

import numpy as np
import pytest
from scipy.io import wavfile

from ssm.data import get_dataset
from ssm.data.audio import WORDS
from ssm.data.manual import MissingDataError

SPLITS = ("train", "validation", "test")
URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
# (word/file, number of samples, split): 12 clips, one shorter than a second, 4 of other words.
CLIPS = [
    ("yes/0a7c2a8d_nohash_0.wav", 16000, "train"),
    ("yes/0b09edd3_nohash_0.wav", 16000, "validation"),
    ("yes/0c40e715_nohash_1.wav", 8000, "train"),
    ("no/0a7c2a8d_nohash_0.wav", 16000, "test"),
    ("no/1b4c9b89_nohash_0.wav", 16000, "train"),
    ("go/0a9f9af7_nohash_0.wav", 16000, "train"),
    ("stop/0ab3b47d_nohash_0.wav", 16000, "test"),
    ("off/0ac15fe9_nohash_2.wav", 16000, "validation"),
    ("bed/0a7c2a8d_nohash_0.wav", 16000, "validation"),
    ("marvin/0b40aa8e_nohash_0.wav", 16000, "test"),
    ("wow/0c2ca723_nohash_0.wav", 16000, "train"),
    ("visual/0d2bcf9d_nohash_0.wav", 16000, "train"),
]
RNG = np.random.default_rng(0)
AUDIO = {name: RNG.integers(-32768, 32768, n, dtype=np.int16) for name, n, _ in CLIPS}
AUDIO["yes/0a7c2a8d_nohash_0.wav"][:2] = [-32768, 32767]

# Builds and reads in a fresh interpreter where `import tensorflow` fails as if not installed.
NO_TENSORFLOW_BODY = """
from ssm.data import get_dataset

dataset = get_dataset("speech_commands", data_dir=sys.argv[1])
for split in dataset.spec.splits:
    source = dataset.source(split)
    result[split] = sorted(
        [int(e["label"]), int(e["length"]), round(float(e["inputs"].sum(dtype="float64")) * 32768)]
        for e in (source[i] for i in range(len(source)))
    )
"""


def write_speech_commands(root) -> None:
    """speech_commands_v0.02/: one folder per word, background noise, and the two split lists."""
    folder = root / "speech_commands_v0.02"
    for word in (*WORDS[35], "_background_noise_"):
        (folder / word).mkdir(parents=True)
    for name, audio in AUDIO.items():
        wavfile.write(folder / name, 16000, audio)
    wavfile.write(folder / "_background_noise_" / "white_noise.wav", 16000, AUDIO[CLIPS[0][0]])
    for split, list_name in (("validation", "validation_list"), ("test", "testing_list")):
        names = [name for name, _, s in CLIPS if s == split]
        (folder / f"{list_name}.txt").write_text("\n".join(names) + "\n")


def expected(num_classes: int, split: str) -> list[tuple[int, int, tuple[float, ...]]]:
    words = WORDS[num_classes]
    rows = []
    for name, n, s in CLIPS:
        word = name.split("/")[0]
        if s == split and word in words:
            padded = np.zeros(16000, np.float32)
            padded[:n] = AUDIO[name] / 32768
            rows.append((words.index(word), n, tuple(padded)))
    return sorted(rows)


def read_split(dataset, split: str) -> list[tuple[int, int, tuple[float, ...]]]:
    source = dataset.source(split)
    examples = [source[i] for i in range(len(source))]
    for e in examples:
        assert e["inputs"].shape == (16000, 1) and e["inputs"].dtype == np.float32
    return sorted((int(e["label"]), int(e["length"]), tuple(e["inputs"][:, 0])) for e in examples)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech_commands")
    write_speech_commands(root / "raw")
    return str(root / "tfds"), str(root / "raw")


def test_sc10_word_order_is_the_ten_commands_and_sc35_is_all_words_sorted():
    assert WORDS[10] == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    assert len(set(WORDS[35])) == 35 and list(WORDS[35]) == sorted(WORDS[35])
    assert set(WORDS[10]) < set(WORDS[35])


@pytest.mark.parametrize("num_classes", [10, 35])
def test_speech_commands_round_trip_waveforms_labels_and_official_splits(dirs, num_classes):
    dataset = get_dataset(
        "speech_commands", data_dir=dirs[0], manual_dir=dirs[1], num_classes=num_classes
    )
    spec = dataset.spec
    assert (spec.seq_len, spec.d_input, spec.num_classes) == (16000, 1, num_classes)
    assert (spec.vocab_size, spec.splits) == (None, SPLITS)
    for split in SPLITS:
        assert read_split(dataset, split) == expected(num_classes, split), split


def test_sc10_keeps_only_the_command_words_and_sc35_every_word(dirs):
    sizes = {}
    for num_classes in (10, 35):
        dataset = get_dataset(
            "speech_commands", data_dir=dirs[0], manual_dir=dirs[1], num_classes=num_classes
        )
        sizes[num_classes] = sum(len(dataset.source(s)) for s in SPLITS)
    assert sizes == {10: 8, 35: 12}


def test_short_clip_is_zero_padded_after_its_length(dirs):
    dataset = get_dataset("speech_commands", data_dir=dirs[0], manual_dir=dirs[1])
    source = dataset.source("train")
    short = [e for e in (source[i] for i in range(len(source))) if e["length"] == 8000]
    assert len(short) == 1
    np.testing.assert_array_equal(short[0]["inputs"][8000:], 0.0)
    assert np.abs(short[0]["inputs"][:8000]).max() > 0


def test_clip_at_another_sample_rate_is_a_value_error_naming_the_file(tmp_path):
    write_speech_commands(tmp_path / "raw")
    wavfile.write(
        tmp_path / "raw" / "speech_commands_v0.02" / "go" / "x.wav", 8000, AUDIO[CLIPS[0][0]]
    )
    with pytest.raises(ValueError, match=r"go/x\.wav is not mono 16-bit audio at 16000 Hz"):
        get_dataset(
            "speech_commands", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw")
        )


@pytest.mark.parametrize("num_classes", [10, 35])
def test_missing_release_error_names_files_manual_dir_and_url(tmp_path, fake_download, num_classes):
    calls = fake_download({})
    with pytest.raises(FileNotFoundError) as error:
        get_dataset("speech_commands", data_dir=str(tmp_path), num_classes=num_classes)
    message = str(error.value)
    assert isinstance(error.value, MissingDataError) and "\n" not in message
    assert f"manual_dir {tmp_path / 'manual' / 'speech_commands'};" in message
    assert "speech_commands_v0.02/validation_list.txt" in message
    assert "speech_commands_v0.02/testing_list.txt" in message
    assert "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz" in message
    assert "set dataset.download=true" in message and calls == []  # offline by default


def test_download_extracts_the_missing_release_into_its_folder_once(tmp_path, dirs, fake_download):
    server = tmp_path / "server"
    write_speech_commands(server)
    with tarfile.open(server / "release.tar.gz", "w:gz") as tar:  # no top folder, as the real one
        tar.add(server / "speech_commands_v0.02", arcname=".")
    calls = fake_download({URL: server / "release.tar.gz"})
    data_dir, manual_dir = str(tmp_path / "tfds"), tmp_path / "manual"
    downloaded = get_dataset(
        "speech_commands", data_dir=data_dir, manual_dir=str(manual_dir), download=True
    )
    assert calls == [[URL]]
    assert [p.name for p in manual_dir.iterdir()] == ["speech_commands_v0.02"]
    extracted = sorted(p.relative_to(manual_dir) for p in manual_dir.rglob("*"))
    by_hand = sorted(p.relative_to(server) for p in server.rglob("*") if p.suffix != ".gz")
    assert extracted == by_hand
    expected = get_dataset("speech_commands", data_dir=dirs[0], manual_dir=dirs[1])
    for split in SPLITS:
        assert read_split(downloaded, split) == read_split(expected, split), split
    options = dict(data_dir=data_dir, manual_dir=str(manual_dir), download=True)
    get_dataset("speech_commands", num_classes=35, **options)  # files there: no download
    shutil.rmtree(manual_dir)
    get_dataset("speech_commands", num_classes=10, **options)  # prepared: no download
    assert len(calls) == 1


def test_audio_builder_round_trips_with_tensorflow_unimportable(tmp_path, run_without_tensorflow):
    write_speech_commands(tmp_path / "manual" / "speech_commands")
    report = run_without_tensorflow(NO_TENSORFLOW_BODY, str(tmp_path))
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    for split in SPLITS:
        rows = [(label, n, round(sum(x) * 32768)) for label, n, x in expected(10, split)]
        assert report[split] == sorted([label, n, total] for label, n, total in rows)
    written = {p.name.split("-")[0] for p in tmp_path.rglob("*.array_record-*")}
    assert written == {"speech_commands_release"}
