"""Release.fetch: downloads moved or extracted into manual_dir's layout (no network: files are
served by the ``fake_download`` fixture)."""

import io
import socket
import tarfile

import pytest
import tensorflow_datasets as tfds

from ssm.data import manual
from ssm.data.manual import MissingDataError, Release, RemoteFile

URL = "https://example.org/release/archive.tar.gz"


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def release(*files: RemoteFile, layout=("data/a.txt",)) -> Release:
    return Release(name="toy", title="Toy", url=URL, layouts=(layout,), files=files)


def test_archive_extracted_into_a_folder_merges_with_what_is_there(tmp_path, fake_download):
    write_tar(tmp_path / "archive", {"./a.txt": b"a", "./sub/b.txt": b"b"})
    calls = fake_download({URL: tmp_path / "archive"})
    manual, downloads = tmp_path / "manual", tmp_path / "downloads"
    (manual / "data").mkdir(parents=True)
    (manual / "data" / "mine.txt").write_bytes(b"kept")
    assert release(RemoteFile(URL, extract=(("", "data"),))).fetch(manual, downloads) == 0
    assert calls == [[URL]]
    files = {p.relative_to(manual).as_posix(): p.read_bytes() for p in manual.rglob("*.txt")}
    assert files == {"data/a.txt": b"a", "data/sub/b.txt": b"b", "data/mine.txt": b"kept"}
    assert sorted(p.name for p in manual.iterdir()) == ["data"]  # no staging folder left
    assert not downloads.exists()


def test_named_members_are_found_by_path_suffix_and_renamed(tmp_path, fake_download):
    members = {"top/top/tsv/x.tsv": b"x", "top/other/x.tsv": b"decoy", "top/top/tsv/y.tsv": b"y"}
    write_tar(tmp_path / "archive", members)
    fake_download({URL: tmp_path / "archive"})
    extract = (("tsv/x.tsv", "x.tsv"), ("tsv/y.tsv", "data/a.txt"))
    release(RemoteFile(URL, extract=extract)).fetch(tmp_path / "manual", tmp_path / "downloads")
    assert (tmp_path / "manual" / "x.tsv").read_bytes() == b"x"
    assert (tmp_path / "manual" / "data" / "a.txt").read_bytes() == b"y"


def test_plain_file_keeps_the_name_of_its_url(tmp_path, fake_download):
    (tmp_path / "served").write_bytes(b"a")
    url = "https://example.org/files/a.txt"
    fake_download({url: tmp_path / "served"})
    layout = release(RemoteFile(url), layout=("a.txt",)).fetch(tmp_path / "m", tmp_path / "d")
    assert layout == 0 and (tmp_path / "m" / "a.txt").read_bytes() == b"a"


def test_archive_lacking_a_named_member_fails_and_keeps_the_download(tmp_path, fake_download):
    write_tar(tmp_path / "archive", {"other.txt": b"o"})
    fake_download({URL: tmp_path / "archive"})
    toy = release(RemoteFile(URL, extract=(("a.txt", "data/a.txt"),)))
    with pytest.raises(MissingDataError, match="lacks a.txt"):
        toy.fetch(tmp_path / "manual", tmp_path / "downloads")
    assert any((tmp_path / "downloads").iterdir())  # a rerun extracts it without downloading
    assert list((tmp_path / "manual").iterdir()) == []  # nothing half-extracted left


def test_download_without_the_layout_files_says_so(tmp_path, fake_download):
    write_tar(tmp_path / "archive", {"wrong.txt": b"w"})
    fake_download({URL: tmp_path / "archive"})
    with pytest.raises(MissingDataError, match=r"did not give the files expected: .*data/a\.txt"):
        release(RemoteFile(URL, extract=(("", ""),))).fetch(tmp_path / "m", tmp_path / "d")


def test_unsafe_member_path_is_refused(tmp_path, fake_download):
    write_tar(tmp_path / "archive", {"../escape.txt": b"e"})
    fake_download({URL: tmp_path / "archive"})
    with pytest.raises(ValueError, match="unsafe path"):
        release(RemoteFile(URL, extract=(("", "data"),))).fetch(tmp_path / "m", tmp_path / "d")
    assert not (tmp_path / "escape.txt").exists()


def test_failed_download_is_one_line_naming_url_and_manual_dir(tmp_path, fake_download):
    fake_download({})  # every URL fails as offline
    with pytest.raises(MissingDataError) as error:
        release(RemoteFile(URL)).fetch(tmp_path / "manual", tmp_path / "downloads")
    message = str(error.value)
    assert "\n" not in message and f"downloading {URL} failed (ConnectionError" in message
    assert (
        f"expected data/a.txt in manual_dir {tmp_path / 'manual'}: download it by hand" in message
    )
    assert not (tmp_path / "downloads").exists()  # partial downloads are not resumed


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_host_fails_before_the_download_manager_retries(tmp_path, monkeypatch):
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    calls = []  # TFDS's download would retry for minutes before failing
    monkeypatch.setattr(
        tfds.download.DownloadManager, "download", lambda _, urls: calls.append(urls)
    )
    port = closed_port()
    with pytest.raises(MissingDataError) as error:
        release(RemoteFile(f"http://127.0.0.1:{port}/a.tar.gz")).fetch(
            tmp_path / "manual", tmp_path / "downloads"
        )
    assert f"failed (ConnectionError: cannot reach 127.0.0.1:{port}: " in str(error.value)
    assert calls == []


def test_reachability_is_not_checked_through_a_proxy(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    manual._check_reachable([f"http://127.0.0.1:{closed_port()}/a"])  # the proxy would fetch it
    monkeypatch.delenv("http_proxy")
    with pytest.raises(ConnectionError, match="cannot reach"):
        manual._check_reachable([f"http://127.0.0.1:{closed_port()}/a"])


def test_release_without_files_is_not_downloadable_and_does_not_offer_it(tmp_path, fake_download):
    calls = fake_download({})
    toy = release()
    with pytest.raises(MissingDataError, match="cannot be downloaded automatically"):
        toy.fetch(tmp_path / "manual", tmp_path / "downloads")
    with pytest.raises(MissingDataError) as error:
        toy.layout(tmp_path / "manual")
    assert "download=true" not in str(error.value) and calls == []
    with pytest.raises(MissingDataError) as error:
        release(RemoteFile(URL)).layout(tmp_path / "manual")
    assert str(error.value).endswith("; or set dataset.download=true to download it there")
