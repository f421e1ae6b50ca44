"""Pathfinder / Path-X: connectivity of the markers is the label, balance, determinism, TFDS,
and reading LRA's release layout from manual_dir."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ssm.config import ConfigError
from ssm.data import get_dataset
from ssm.data.manual import MissingDataError
from ssm.data.pathfinder import pathfinder_example, pathfinder_sample

SPLITS = ("train", "validation", "test")
TINY = {"train": 64, "validation": 16, "test": 16}

# Builds and reads Pathfinder in a fresh interpreter where `import tensorflow` fails.
NO_TENSORFLOW_BODY = """
from ssm.data import get_dataset

dataset = get_dataset("pathfinder", data_dir=sys.argv[1], size="tiny")
example = dataset.source("validation")[5]
result["sizes"] = {split: len(dataset.source(split)) for split in dataset.spec.splits}
result["inputs"] = example["inputs"].ravel().tolist()
result["label"] = int(example["label"])
"""


def markers_joined(image: np.ndarray, markers: np.ndarray) -> bool:
    """Whether an 8-connected path of nonzero pixels joins the pixels under the two markers."""
    components, _ = ndimage.label(image > 0, structure=np.ones((3, 3)))
    (y0, x0), (y1, x1) = np.round(markers).astype(int)
    assert components[y0, x0] and components[y1, x1], "a marker is not drawn"
    return components[y0, x0] == components[y1, x1]


def as_image(inputs: np.ndarray, resolution: int) -> np.ndarray:
    """Model inputs (r * r, 1) in [-1, 1] back to (r, r) uint8."""
    return np.round((inputs.reshape(resolution, resolution) + 1) * 255 / 2).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return get_dataset("pathfinder", data_dir=str(tiny_dir), size="tiny")


@pytest.mark.parametrize(("resolution", "count"), [(32, 24), (64, 4), (128, 2), (256, 1)])
def test_pathfinder_markers_are_joined_by_a_contour_exactly_in_positive_examples(resolution, count):
    labels = []
    for index in range(count):
        sample = pathfinder_sample(resolution, 14, index, seed=0)
        assert sample.image.shape == (resolution, resolution) and sample.image.dtype == np.uint8
        assert markers_joined(sample.image, sample.markers) == bool(sample.label)
        labels.append(sample.label)
    assert labels == [i % 2 for i in range(count)]


def test_pathfinder_targets_have_contour_length_segments_and_markers_on_their_ends():
    for index, length in ((0, 6), (1, 9), (2, 14)):
        sample = pathfinder_sample(32, length, index, seed=3)
        assert sample.targets.shape == (2, length + 1, 2)
        ends = {tuple(p) for t in sample.targets for p in (t[0], t[-1])}
        assert {tuple(m) for m in sample.markers} <= ends
        assert all(len(d) == length // 3 + 1 for d in sample.distractors)


def test_pathfinder_labels_are_balanced_in_every_split(tiny):
    for split in SPLITS:
        source = tiny.source(split)
        labels = [source[i]["label"] for i in range(len(source))]
        assert sum(labels) * 2 == len(labels) == TINY[split]


def test_pathfinder_dataset_examples_are_the_generated_images_as_sequences(tiny):
    spec = tiny.spec
    assert (spec.name, spec.seq_len, spec.num_classes, spec.d_input) == ("pathfinder", 1024, 2, 1)
    offsets = {"train": 0, "validation": 64, "test": 80}
    for split, offset in offsets.items():
        example = tiny.source(split)[3]
        assert example["inputs"].shape == (1024, 1) and example["inputs"].dtype == np.float32
        assert -1 <= example["inputs"].min() and example["inputs"].max() <= 1
        image, label = pathfinder_example(32, 14, offset + 3, seed=0)
        np.testing.assert_array_equal(as_image(example["inputs"], 32), image)
        assert example["label"] == label


def test_pathfinder_pixel_tokens_are_the_grey_levels_of_the_real_pixels(tiny, tiny_dir):
    tokens = get_dataset("pathfinder", data_dir=str(tiny_dir), size="tiny", pixels="tokens")
    spec = tokens.spec
    assert (spec.seq_len, spec.num_classes, spec.d_input, spec.vocab_size) == (1024, 2, None, 256)
    for split in SPLITS:
        assert len(tokens.source(split)) == TINY[split]
        for i in (0, 7):
            token, real = tokens.source(split)[i], tiny.source(split)[i]
            assert token["inputs"].shape == (1024,) and token["inputs"].dtype == np.int32
            np.testing.assert_array_equal(token["inputs"], as_image(real["inputs"], 32).ravel())
            assert token["label"] == real["label"]
            assert len(np.unique(token["inputs"])) > 2  # antialiased grey levels, not binarized
    assert len(list((tiny_dir / "pathfinder").iterdir())) == 1  # one build serves both


def test_pathfinder_same_seed_gives_byte_identical_images_and_another_seed_differs():
    for index in (0, 5):
        image, label = pathfinder_example(64, 14, index, seed=0)
        again, label_again = pathfinder_example(64, 14, index, seed=0)
        other, _ = pathfinder_example(64, 14, index, seed=1)
        assert image.tobytes() == again.tobytes() and label == label_again
        assert image.tobytes() != other.tobytes()
    assert (
        pathfinder_example(64, 14, 0, 0)[0].tobytes()
        != pathfinder_example(64, 14, 2, 0)[0].tobytes()
    )


def test_pathfinder_builds_array_record_and_reads_it_with_tensorflow_unimportable(
    tmp_path, run_without_tensorflow
):
    report = run_without_tensorflow(NO_TENSORFLOW_BODY, str(tmp_path))
    assert report["sizes"] == TINY
    assert report["tensorflow_imported"] is False and report["tensorflow_attempts"] == []
    image, label = pathfinder_example(32, 14, 64 + 5, seed=0)
    np.testing.assert_array_equal(as_image(np.array(report["inputs"]), 32), image)
    assert report["label"] == label
    written = {p.name.split("-")[1] for p in tmp_path.rglob("*.array_record-*")}
    assert written == {f"{split}.array_record" for split in SPLITS}


def write_release(root, resolution: int = 32) -> list[tuple[np.ndarray, int]]:
    """A tiny fake of LRA's release: 2 metadata files listing 11 rows, of which one image is
    missing and one empty. Returns the 9 readable (image, label) in metadata order."""
    folder = root / f"pathfinder{resolution}" / "curv_contour_length_14"
    rng = np.random.default_rng(0)
    readable = []
    for batch, rows in ((0, range(6)), (1, range(5))):
        (folder / "imgs" / str(batch)).mkdir(parents=True)
        (folder / "metadata").mkdir(exist_ok=True)
        lines = []
        for i in rows:
            label = (batch + i) % 2
            name = f"sample_{i}.png"
            lines.append(f"imgs/{batch} {name} {i} {label} 1.8 14 4 2 0.5 1 1")
            path = folder / "imgs" / str(batch) / name
            if (batch, i) == (0, 2):
                continue  # listed but missing
            if (batch, i) == (1, 3):
                path.touch()  # listed but empty
                continue
            image = rng.integers(0, 256, (resolution, resolution), dtype=np.uint8)
            Image.fromarray(image).save(path)
            readable.append((image, label))
        (folder / "metadata" / f"{batch}.npy").write_text("\n".join(lines) + "\n")
    return readable


def test_pathfinder_reads_lra_release_layout_skipping_missing_and_empty_images(tmp_path):
    expected = write_release(tmp_path / "lra_release")
    dataset = get_dataset(
        "pathfinder", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "lra_release")
    )
    sizes = {split: len(dataset.source(split)) for split in SPLITS}
    assert sizes == {"train": 7, "validation": 1, "test": 1}  # 80 / 10 / 10 in order
    read = [dataset.source(split)[i] for split in SPLITS for i in range(sizes[split])]
    for example, (image, label) in zip(read, expected, strict=True):
        np.testing.assert_array_equal(as_image(example["inputs"], 32), image)
        assert example["label"] == label


def test_pathfinder_missing_release_error_names_the_expected_file_and_download(tmp_path):
    with pytest.raises(MissingDataError) as error:
        get_dataset(
            "pathfinder",
            data_dir=str(tmp_path / "tfds"),
            resolution=128,
            manual_dir=str(tmp_path / "empty"),
        )
    message = str(error.value)
    assert "pathfinder128/curv_contour_length_14/metadata/0.npy" in message
    assert str(tmp_path / "empty") in message and "lra_release.gz" in message


def test_pathfinder_invalid_resolution_is_a_config_error_naming_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="dataset.resolution=48.*32, 64, 128, 256"):
        get_dataset("pathfinder", data_dir=str(tmp_path), resolution=48)
