"""Speech Commands v0.02 keyword classification from raw 16 kHz waveforms (SC10 and SC35).

Registered dataset ``speech_commands`` (option ``num_classes``: 10 or 35). Examples: ``inputs``
(16000, 1) float32, the 16-bit samples / 32768, zero-padded after ``length`` samples (a few clips
are shorter than one second); ``label``, the word's index in ``WORDS[num_classes]``. SC10 is the
10 command words (yes, no, up, down, left, right, on, off, stop, go); SC35 all 35 words, sorted.
Splits follow the release's ``validation_list.txt`` and ``testing_list.txt``; the rest is train.
Each class set is its own TFDS builder config. The release is read from ``manual_dir``; with
``download=True`` it is first downloaded and extracted there if missing (see ``ssm.data.manual``).
"""

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow_datasets as tfds
from scipy.io import wavfile

from ssm.data.build import Builder
from ssm.data.manual import Release, ReleaseOptions, RemoteFile, release_dataset
from ssm.data.registry import SPLITS, Dataset, DatasetSpec, register_dataset

SAMPLE_RATE = 16000
SEQ_LEN = SAMPLE_RATE  # one second
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS = {
    10: COMMANDS,
    35: tuple(
        sorted(
            COMMANDS
            + ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
            + ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
            + ("backward", "forward", "follow", "learn", "visual")
        )
    ),
}

FOLDER = "speech_commands_v0.02"
SPEECH_COMMANDS = Release(
    name="speech_commands",
    title="Speech Commands v0.02",
    url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
    layouts=((f"{FOLDER}/validation_list.txt", f"{FOLDER}/testing_list.txt"),),
    hint=f"extract it: mkdir -p {{manual_dir}}/{FOLDER} && tar -xzf {FOLDER}.tar.gz -C "
    f"{{manual_dir}}/{FOLDER}",
    files=(
        RemoteFile(
            "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
            extract=(("", FOLDER),),  # the archive has no top folder
        ),
    ),
)


@dataclasses.dataclass(eq=False)
class SpeechCommandsConfig(tfds.core.BuilderConfig):
    """A builder config per class set (named ``sc10``, ``sc35``)."""

    words: tuple[str, ...] = ()


class SpeechCommandsRelease(Builder):
    """Speech Commands clips of the config's words; ``audio`` (n,) int16, n <= 16000."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Extract {SPEECH_COMMANDS.url} into manual_dir/{FOLDER}."
    BUILDER_CONFIGS = [
        SpeechCommandsConfig(name=f"sc{n}", words=words) for n, words in WORDS.items()
    ]

    DESCRIPTION = "Speech Commands v0.02 one-second clips at 16 kHz."
    HOMEPAGE = "https://arxiv.org/abs/1804.03209"

    def _features(self):
        audio = tfds.features.Tensor(
            shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES
        )
        label = tfds.features.ClassLabel(names=list(self.builder_config.words))
        return {"audio": audio, "label": label}

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        SPEECH_COMMANDS.layout(root)
        root = root / FOLDER
        missing = [w for w in self.builder_config.words if not (root / w).is_dir()]
        if missing:
            raise ValueError(f"{root} lacks the word folders {', '.join(missing)}")
        held_out = {
            split: set((root / f"{split}_list.txt").read_text().split())
            for split in ("validation", "testing")
        }
        clips = {split: [] for split in SPLITS}
        for word in self.builder_config.words:
            for path in sorted((root / word).glob("*.wav")):
                name = f"{word}/{path.name}"
                split = (
                    "validation"
                    if name in held_out["validation"]
                    else "test"
                    if name in held_out["testing"]
                    else "train"
                )
                clips[split].append(name)
        return {split: self._generate_examples(root, names) for split, names in clips.items()}

    def _generate_examples(self, root: Path, names: list[str]):
        """Yields (``word/file.wav``, example) of mono 16-bit 16 kHz clips up to one second."""
        for name in names:
            rate, audio = wavfile.read(root / name)
            if rate != SAMPLE_RATE or audio.dtype != np.int16 or audio.ndim != 1:
                raise ValueError(f"{root / name} is not mono 16-bit audio at {SAMPLE_RATE} Hz")
            if len(audio) > SEQ_LEN:
                raise ValueError(f"{root / name} is longer than {SEQ_LEN} samples")
            yield name, {"audio": audio, "label": name.split("/")[0]}


def _example(example: dict) -> dict:
    audio = example["audio"]
    inputs = np.zeros((SEQ_LEN, 1), dtype=np.float32)
    inputs[: len(audio), 0] = audio / np.float32(32768)
    return {"inputs": inputs, "length": len(audio), "label": example["label"]}


@register_dataset("speech_commands", shared=ReleaseOptions)
def speech_commands(*, num_classes: Literal[10, 35] = 10, **options) -> Dataset:
    """Speech Commands (SC10 or SC35) as raw waveforms, (16000, 1).

    ``manual_dir`` holds the extracted ``speech_commands_v0.02/`` (default
    ``<data_dir>/manual/speech_commands``); ``download`` fetches the archive (2.3 GB) and extracts
    it.

    Args:
        num_classes: 10 (the command words) or 35 (all words).
    """
    return release_dataset(
        SpeechCommandsRelease,
        SPEECH_COMMANDS,
        DatasetSpec("speech_commands", seq_len=SEQ_LEN, num_classes=num_classes, d_input=1),
        _example,
        ReleaseOptions(**options),
        config=f"sc{num_classes}",
    )
