"""Fixtures of the data tests: running a script in an interpreter where tensorflow is blocked,
and downloads served from local files."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from ssm.data import manual

# Makes `import tensorflow` fail as if it were not installed, recording every attempt; checks that
# it does, then forgets that first attempt.
_BLOCK_TENSORFLOW = """
import importlib.abc, importlib.machinery, json, sys

attempts = []

class BlockTensorflow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        attempts.append(spec.name)
        raise ModuleNotFoundError(f"{spec.name} is blocked in this test")

    def exec_module(self, module):
        raise AssertionError("unreachable")

sys.meta_path.insert(0, BlockTensorflow())
try:
    import tensorflow
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("tensorflow was importable")
assert attempts == ["tensorflow"], attempts
attempts.clear()
result = {}
"""

_REPORT = """
result["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
result["tensorflow_attempts"] = attempts
print(json.dumps(result))
"""


def _run_without_tensorflow(body: str, *args: str) -> dict:
    """Runs ``body`` in a fresh interpreter where ``import tensorflow`` fails; ``sys.argv[1:]``
    are ``args``. The body fills the dict ``result``; returned with ``tensorflow_imported``
    (whether any tensorflow module got into ``sys.modules``) and ``tensorflow_attempts`` (the
    tensorflow modules the body tried to import) added.
    """
    script = _BLOCK_TENSORFLOW + textwrap.dedent(body) + _REPORT
    process = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.fixture
def run_without_tensorflow():
    """``run_without_tensorflow(body, *args) -> dict``: see ``_run_without_tensorflow``."""
    return _run_without_tensorflow


@pytest.fixture
def fake_download(monkeypatch):
    """``fake_download(files) -> calls``: makes ``tfds.download.DownloadManager.download`` copy
    ``files[url]`` (a local path) into the manager's download folder, under a name unlike the
    URL's as TFDS's own are, instead of fetching ``url``; a URL not in ``files`` raises
    ``ConnectionError`` as offline. ``calls`` collects the list of URLs of each call.
    """

    def install(files: dict[str, Path]) -> list[list[str]]:
        calls = []

        def download(self, url_or_urls):
            urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
            calls.append(urls)
            paths = []
            for index, url in enumerate(urls):
                if url not in files:
                    raise ConnectionError(f"no network in tests: {url}")
                path = Path(self.download_dir) / f"download_{index}.bin"
                shutil.copyfile(files[url], path)
                paths.append(path)
            return paths[0] if isinstance(url_or_urls, str) else paths

        monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
        monkeypatch.setattr(manual, "_check_reachable", lambda urls: None)
        return calls

    return install
