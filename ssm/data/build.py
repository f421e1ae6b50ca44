"""Preparing TFDS builders as array_record, quietly, once per data directory and config."""

import contextlib
from collections.abc import Callable

import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.utils import tqdm_utils


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


def prepare_builder(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    *,
    data_dir: str,
    config: tfds.core.BuilderConfig | str | None = None,
    download_config: tfds.download.DownloadConfig | None = None,
    check: Callable[[], object] | None = None,
) -> tfds.core.GeneratorBasedBuilder:
    """The builder for ``config`` under ``data_dir``, written as array_record unless already there.

    Args:
        builder_cls: the TFDS builder.
        data_dir: TFDS data directory.
        config: builder config (or its name); None means the builder's default.
        download_config: passed to ``download_and_prepare`` when the data is built.
        check: called before building (not when already built), to fail early, e.g. when the
            files the builder reads are missing.
    """
    with quiet_tfds():
        builder = builder_cls(data_dir=data_dir, config=config, file_format="array_record")
        if not builder.is_prepared():
            if check is not None:
                check()
            builder.download_and_prepare(download_config=download_config)
    return builder
