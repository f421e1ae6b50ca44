"""Datasets (TFDS builders read through array_record), the dataset registry and Grain loaders."""

from ssm.data import audio as _audio  # noqa: F401  (registers "speech_commands")
from ssm.data import corpus as _corpus  # noqa: F401  (registers "bytes", "enwik8", "wikitext103")
from ssm.data import digits as _digits  # noqa: F401  (registers "digits")
from ssm.data import images as _images  # noqa: F401  (registers CIFAR and MNIST datasets)
from ssm.data import listops as _listops  # noqa: F401  (registers "listops")
from ssm.data import pathfinder as _pathfinder  # noqa: F401  (registers "pathfinder")
from ssm.data import synthetic as _synthetic  # noqa: F401  (registers the synthetic tasks)
from ssm.data import text as _text  # noqa: F401  (registers "imdb", "aan")
from ssm.data.loader import Loader
from ssm.data.registry import (
    DATASETS,
    Dataset,
    DatasetSpec,
    dataset_options_class,
    get_dataset,
    register_dataset,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "Loader",
    "dataset_options_class",
    "get_dataset",
    "register_dataset",
    "resolve_data_dir",
]
