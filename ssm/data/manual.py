"""Datasets built from files the user downloads into a ``manual_dir``.

Each such dataset names a ``Release``: where to download it and the file layouts accepted in its
``manual_dir`` (default ``<data_dir>/manual/<release name>``). The TFDS builder is prepared from
those files once; without them ``prepare`` raises ``MissingDataError``, whose one-line message
names the dataset, the files expected, the folder looked in and the download URL. Nothing is
downloaded automatically, so runs behave the same online and offline.
"""

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from ssm.data.build import prepare_builder


class MissingDataError(FileNotFoundError):
    """A downloaded release is missing; the message says what to download and where to put it."""


@dataclasses.dataclass(frozen=True)
class Release:
    """A downloadable release and the layouts accepted for it in ``manual_dir``.

    Attributes:
        name: folder under ``<data_dir>/manual`` that is the default ``manual_dir``.
        title: human name of the release, used in messages.
        url: where to download it.
        layouts: alternatives, each the paths (relative to ``manual_dir``) that must all exist.
        hint: what to do with the download, e.g. how to extract it; ``{manual_dir}`` is filled in.
    """

    name: str
    title: str
    url: str
    layouts: tuple[tuple[str, ...], ...]
    hint: str = "put it there"

    def manual_dir(self, data_dir: str, manual_dir: str | None = None) -> Path:
        """``manual_dir``, else ``<data_dir>/manual/<name>``."""
        return Path(manual_dir or Path(data_dir) / "manual" / self.name).expanduser()

    def layout(self, manual_dir: Path) -> int:
        """Index of the first layout whose paths all exist in ``manual_dir``.

        Raises:
            MissingDataError: no layout is complete.
        """
        manual_dir = Path(manual_dir)
        for index, paths in enumerate(self.layouts):
            if all((manual_dir / path).exists() for path in paths):
                return index
        alternatives = [
            paths[0] if len(paths) == 1 else f"[{', '.join(paths)}]" for paths in self.layouts
        ]
        raise MissingDataError(
            f"{self.title} not found: expected {' or '.join(alternatives)} in manual_dir "
            f"{manual_dir}; download {self.url} and {self.hint.format(manual_dir=manual_dir)} "
            "(or set dataset.manual_dir)"
        )


def prepare(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    release: Release,
    *,
    data_dir: str,
    manual_dir: str | None,
    config: tfds.core.BuilderConfig | str | None = None,
) -> tfds.core.GeneratorBasedBuilder:
    """The builder, prepared as array_record from the release's files unless already prepared.

    Raises:
        MissingDataError: the builder is not prepared and the release's files are missing.
    """
    folder = release.manual_dir(data_dir, manual_dir)
    return prepare_builder(
        builder_cls,
        data_dir=data_dir,
        config=config,
        download_config=tfds.download.DownloadConfig(manual_dir=str(folder)),
        check=functools.partial(release.layout, folder),
    )


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
