"""Datasets built from a release's files in a ``manual_dir``, downloaded there only on request.

Each such dataset names a ``Release``: where to download it, the file layouts accepted in its
``manual_dir`` (default ``<data_dir>/manual/<release name>``) and the files it is made of. The TFDS
builder is prepared from those files once. Offline first: nothing is downloaded unless the dataset
option ``download`` is true, so by default runs behave the same online and offline. Without the
files ``release_dataset`` raises ``MissingDataError``, whose one-line message names the dataset,
the files expected, the folder looked in, the download URL and, where the release can be fetched,
``dataset.download=true``. With ``download=True``, missing files are fetched by TFDS's download
manager (plain http; TensorFlow is not needed) into ``<data_dir>/downloads/<release name>``, moved
or extracted into the layout of ``manual_dir`` that the builder reads, and the download folder is
removed; files already in ``manual_dir``, or a builder already prepared, mean no download.
"""

import dataclasses
import shutil
import socket
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from ssm.data.build import builder_dataset, prepare_builder, tfds_output
from ssm.data.registry import Dataset, DatasetSpec, resolve_data_dir

STAGING = ".download"  # folder of manual_dir where a fetch is assembled before it is moved in


class MissingDataError(FileNotFoundError):
    """A downloaded release is missing; the message says what to download and where to put it."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file a release is made of, and where it goes in ``manual_dir``.

    Attributes:
        url: where to download it.
        extract: empty: the file is kept as it is, named as the last part of its URL. Otherwise it
            is a tar archive (any compression) and these pairs ``(member, destination)`` of
            relative paths say what to take from it: ``("", folder)`` extracts every file into
            ``folder``; ``(path, file)`` extracts as ``file`` the member whose path is ``path`` or
            ends with ``/path``. A leading ``./`` of member paths is ignored.
    """

    url: str
    extract: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The last part of the URL's path."""
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


@dataclasses.dataclass(frozen=True)
class Release:
    """A downloadable release and the layouts accepted for it in ``manual_dir``.

    Attributes:
        name: folder under ``<data_dir>/manual`` that is the default ``manual_dir``.
        title: human name of the release, used in messages.
        url: where to download it (by hand).
        layouts: alternatives, each the paths (relative to ``manual_dir``) that must all exist.
        hint: what to do with the download, e.g. how to extract it; ``{manual_dir}`` is filled in.
        files: what ``fetch`` downloads, giving the first layout; empty means the release is not
            downloaded automatically.
    """

    name: str
    title: str
    url: str
    layouts: tuple[tuple[str, ...], ...]
    hint: str = "put it there"
    files: tuple[RemoteFile, ...] = ()

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
        fetch = "; or set dataset.download=true to download it there" if self.files else ""
        raise MissingDataError(
            f"{self.title} not found: {self._expected(manual_dir)}; download {self.url} and "
            f"{self.hint.format(manual_dir=manual_dir)} (or set dataset.manual_dir){fetch}"
        )

    def _expected(self, manual_dir: Path) -> str:
        alternatives = [
            paths[0] if len(paths) == 1 else f"[{', '.join(paths)}]" for paths in self.layouts
        ]
        return f"expected {' or '.join(alternatives)} in manual_dir {manual_dir}"

    def fetch(self, manual_dir: Path, download_dir: Path) -> int:
        """Downloads ``files`` into ``download_dir`` and moves or extracts them into ``manual_dir``.

        The files are assembled in ``<manual_dir>/.download`` and moved into place only when all
        are there; ``download_dir`` is removed afterwards. If extracting fails it is kept, so that
        a rerun does not download again (delete it if the archive is corrupt).

        Returns:
            the index of the layout the files gave (see ``layout``).

        Raises:
            MissingDataError: the release is not downloadable, the download failed, or it did not
                give the files of a layout.
        """
        manual_dir, download_dir = Path(manual_dir), Path(download_dir)
        if not self.files:
            raise MissingDataError(
                f"{self.title} cannot be downloaded automatically: {self._expected(manual_dir)}; "
                f"download {self.url} and {self.hint.format(manual_dir=manual_dir)}"
            )
        urls = [file.url for file in self.files]
        with _progress():
            manager = tfds.download.DownloadManager(download_dir=download_dir)
            try:
                _check_reachable(urls)
                paths = manager.download(urls)
            except Exception as error:  # network, HTTP status, checksum: all mean "do it by hand"
                shutil.rmtree(download_dir, ignore_errors=True)  # partial downloads don't resume
                reason = " ".join(f"{type(error).__name__}: {error}".split())
                raise MissingDataError(
                    f"{self.title}: downloading {self.url} failed ({reason}); "
                    f"{self._expected(manual_dir)}: download it by hand and "
                    f"{self.hint.format(manual_dir=manual_dir)}"
                ) from error
            staging = manual_dir / STAGING
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            try:
                for file, path in zip(self.files, paths, strict=True):
                    if file.extract:
                        logging.info("Extracting %s into %s", file.name, manual_dir)
                        _extract(Path(path), file.extract, staging, file.url)
                    else:
                        shutil.move(path, staging / file.name)
                for entry in sorted(staging.iterdir()):
                    _move_into(entry, manual_dir / entry.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(download_dir, ignore_errors=True)
        try:
            return self.layout(manual_dir)
        except MissingDataError:
            raise MissingDataError(
                f"{self.title}: the download of {', '.join(urls)} did not give the files "
                f"expected: {self._expected(manual_dir)}"
            ) from None


def archive_release(
    name: str, title: str, url: str, folder: str, contents: tuple[str, ...]
) -> Release:
    """A release downloaded as one archive, kept as it is, or extracted as ``folder``.

    Args:
        name, title, url: as in ``Release``; the archive is named as the last part of ``url``.
        folder: the archive's top folder.
        contents: paths inside ``folder`` that must all exist when the archive is extracted.
    """
    archive = RemoteFile(url)
    return Release(
        name=name,
        title=title,
        url=url,
        layouts=((archive.name,), tuple(f"{folder}/{path}" for path in contents)),
        hint=f"put the archive (or its extracted {folder}/ folder) there",
        files=(archive,),
    )


def _check_reachable(urls: list[str], timeout: float = 10.0) -> None:
    """Connects once to each URL's host, so that being offline fails in a second rather than
    after minutes of download retries. Skipped for a scheme with a proxy configured.

    Raises:
        ConnectionError: a host cannot be resolved or connected to.
    """
    proxies = urllib.request.getproxies()
    hosts = {}  # (host, port), in order
    for parts in map(urllib.parse.urlparse, urls):
        if parts.scheme in ("http", "https") and parts.scheme not in proxies:
            hosts[parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)] = None
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as error:
            raise ConnectionError(f"cannot reach {host}:{port}: {error}") from None


def _progress():
    """Shows TFDS's download progress bars and absl info logs (hidden while preparing)."""
    return tfds_output(progress_bars=True, verbosity=logging.INFO)


def _member_path(name: str) -> PurePosixPath:
    """A tar member's name as a relative path without ``.`` parts; unsafe names raise."""
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if name.startswith("/") or ".." in parts:
        raise ValueError(f"unsafe path {name!r} in archive")
    return PurePosixPath(*parts)


def _extract(archive: Path, pairs: tuple[tuple[str, str], ...], root: Path, url: str) -> None:
    """Extracts from ``archive`` (downloaded from ``url``) into ``root`` the files ``pairs`` select
    (see ``RemoteFile.extract``).

    Reads the archive as a stream, stopping once every named member is found (unless every file
    is extracted).
    """
    folders = [PurePosixPath(dest) for member, dest in pairs if not member]
    named = {member: PurePosixPath(dest) for member, dest in pairs if member}
    found = set()
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            if member.isdir():  # kept (even if empty) where every file is extracted
                for folder in folders:
                    (root / folder / _member_path(member.name)).mkdir(parents=True, exist_ok=True)
            if not member.isfile():
                continue
            path = _member_path(member.name)
            targets = [folder / path for folder in folders]
            for name, dest in named.items():
                if path.as_posix() == name or path.as_posix().endswith("/" + name):
                    targets.append(dest)
                    found.add(name)
            if targets:
                first, *others = (root / target for target in targets)
                first.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(first, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                for other in others:
                    other.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(first, other)
            if not folders and found == set(named):
                break
    missing = sorted(set(named) - found)
    if missing:
        raise MissingDataError(f"{archive} (from {url}) lacks {', '.join(missing)}")


def _move_into(source: Path, target: Path) -> None:
    """Moves ``source`` to ``target``, merging folders into folders that already exist."""
    if source.is_dir() and target.is_dir():
        for child in sorted(source.iterdir()):
            _move_into(child, target / child.name)
        source.rmdir()
    else:
        source.replace(target)


@dataclasses.dataclass(frozen=True)
class ReleaseOptions:
    """The options every dataset built from a downloaded release takes.

    Attributes:
        data_dir: TFDS data directory; None means ``$SSM_DATA_DIR`` or ``~/.cache/ssm_jax/tfds``.
        manual_dir: folder of the release's files; None means ``<data_dir>/manual/<release name>``.
        download: if the dataset is not prepared and manual_dir lacks the files, download them
            there (``Release.fetch``; the downloads go to ``<data_dir>/downloads/<release name>``);
            False never touches the network.
    """

    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = False


def release_builder(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    release: Release,
    options: ReleaseOptions,
    *,
    config: tfds.core.BuilderConfig | str | None = None,
) -> tfds.core.GeneratorBasedBuilder:
    """The builder of a downloaded release, prepared as array_record unless it is.

    Args:
        builder_cls: the TFDS builder, reading the release's files from its ``manual_dir``.
        release: the files it reads.
        options: where the data is, and whether to download it.
        config: builder config (or its name); None means the builder's default.

    Raises:
        MissingDataError: the builder is not prepared and the release's files are missing (and
            not downloaded: ``download`` false, or the download failed).
    """
    data_dir = resolve_data_dir(options.data_dir)
    folder = release.manual_dir(data_dir, options.manual_dir)

    def check() -> None:
        try:
            release.layout(folder)
        except MissingDataError:
            if not options.download:
                raise
            release.fetch(folder, Path(data_dir).expanduser() / "downloads" / release.name)

    return prepare_builder(
        builder_cls,
        data_dir=data_dir,
        config=config,
        download_config=tfds.download.DownloadConfig(manual_dir=str(folder)),
        check=check,
    )


def release_dataset(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    release: Release,
    spec: DatasetSpec,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    options: ReleaseOptions,
    *,
    config: tfds.core.BuilderConfig | str | None = None,
    stored: Mapping[str, str] | None = None,
) -> Dataset:
    """A dataset of a downloaded release (its builder from ``release_builder``).

    Args:
        builder_cls: the TFDS builder, reading the release's files from its ``manual_dir``.
        release: the files it reads.
        spec: the dataset's spec.
        fn: stored example -> example (see ``MappedSource``).
        options: where the data is, and whether to download it.
        config: builder config (or its name); None means the builder's default.
        stored: split -> stored split (see ``builder_dataset``); None means the same names.

    Raises:
        MissingDataError: as ``release_builder``.
    """
    builder = release_builder(builder_cls, release, options, config=config)
    return builder_dataset(builder, spec, fn, stored)
