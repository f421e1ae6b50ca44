"""TFDS builders prepared as array_record, quietly, once per data directory and config, and the
Datasets read from them."""

import contextlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.utils import tqdm_utils

from ssm.data.registry import Dataset, DatasetSpec, resolve_data_dir


@contextlib.contextmanager
def tfds_output(*, progress_bars: bool, verbosity: int):
    """Sets TFDS's progress bars and the absl log level, restoring both afterwards."""
    bars, previous = tqdm_utils._active, logging.get_verbosity()
    tfds.display_progress_bar(progress_bars)
    logging.set_verbosity(verbosity)
    try:
        yield
    finally:
        tfds.display_progress_bar(bars)
        logging.set_verbosity(previous)


def quiet_tfds():
    """Hides TFDS's progress bars and absl info/warnings (a context manager)."""
    return tfds_output(progress_bars=False, verbosity=logging.ERROR)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Base of this package's TFDS builders: their version, and a ``code_path`` given, not derived.

    tfds 4.9.10 derives ``code_path`` (where it looks for checksums) through the undeclared
    ``importlib_resources`` package (tensorflow/datasets#11212), which fails for builders outside
    tfds; every builder here lives in this folder.

    A subclass declares its ``DatasetInfo`` by ``_features`` and the class attributes below, which
    ``_info`` (implemented here, once) passes on.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path = tfds.core.Path(__file__)

    DESCRIPTION: str | None = None  # None means the docstring of the subclass's module
    HOMEPAGE: str | None = None
    SUPERVISED_KEYS: tuple[str, str] | None = None
    DISABLE_SHUFFLING = False  # True keeps the examples in generation order

    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        """The features of an example, by name (for this builder's config)."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION or sys.modules[type(self).__module__].__doc__,
            features=tfds.features.FeaturesDict(self._features()),
            supervised_keys=self.SUPERVISED_KEYS,
            disable_shuffling=self.DISABLE_SHUFFLING,
            homepage=self.HOMEPAGE,
        )


def prepare_builder(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    *,
    data_dir: str | None,
    config: tfds.core.BuilderConfig | str | None = None,
    download_config: tfds.download.DownloadConfig | None = None,
    check: Callable[[], object] | None = None,
) -> tfds.core.GeneratorBasedBuilder:
    """The builder for ``config`` under ``data_dir``, written as array_record unless already there.

    Args:
        builder_cls: the TFDS builder.
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        config: builder config (or its name); None means the builder's default.
        download_config: passed to ``download_and_prepare`` when the data is built.
        check: called before building (not when already built), to fail early, e.g. when the
            files the builder reads are missing.
    """
    with quiet_tfds():
        builder = builder_cls(
            data_dir=resolve_data_dir(data_dir), config=config, file_format="array_record"
        )
        if not builder.is_prepared():
            if check is not None:
                check()
            builder.download_and_prepare(download_config=download_config)
    return builder


class MappedSource:
    """A random-access source whose examples are ``fn(example)`` of another source's examples.

    Args:
        source: random-access examples (``len()``, ``__getitem__(i) -> dict``).
        fn: example dict -> example dict; a picklable function (e.g. a ``functools.partial``).
    """

    def __init__(self, source, fn: Callable[[dict[str, Any]], dict[str, Any]]):
        self.source, self.fn = source, fn

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.fn(self.source[index])


def builder_dataset(
    builder: tfds.core.GeneratorBasedBuilder,
    spec: DatasetSpec,
    fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    stored: Mapping[str, str] | None = None,
) -> Dataset:
    """The Dataset of a prepared builder: split ``s`` reads the stored split ``stored[s]``.

    Args:
        builder: a prepared TFDS builder.
        spec: the dataset's spec; its splits are the Dataset's.
        fn: stored example -> example (see ``MappedSource``); None keeps the stored examples.
        stored: split -> stored split name or slice (e.g. ``train[90%:]``); None means each split
            is stored under its own name. Splits read from the same name share one source.
    """
    stored = stored or {split: split for split in spec.splits}
    sources = {}
    for name in dict.fromkeys(stored.values()):
        source = builder.as_data_source(split=name)
        sources[name] = source if fn is None else MappedSource(source, fn)
    return Dataset(spec=spec, sources={split: sources[stored[split]] for split in spec.splits})
