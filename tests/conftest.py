import os

import pytest

# Strict dispatch: a fast implementation that cannot serve a call is an error, never a silent
# fallback to the reference (subprocesses inherit it).
os.environ["SSM_STRICT_DISPATCH"] = "1"


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory):
    """Every test (and subprocess) builds and reads datasets in one temporary folder."""
    path = str(tmp_path_factory.mktemp("tfds"))
    old = os.environ.get("SSM_DATA_DIR")
    os.environ["SSM_DATA_DIR"] = path
    yield path
    if old is None:
        os.environ.pop("SSM_DATA_DIR", None)
    else:
        os.environ["SSM_DATA_DIR"] = old
