import atexit
import os
import shutil
import tempfile

import pytest

# Strict dispatch: a fast implementation that cannot serve a call is an error, never a silent
# fallback to the reference (subprocesses inherit it).
os.environ["SSM_STRICT_DISPATCH"] = "1"

# One persistent XLA compilation cache for the session, its xdist workers and their subprocesses
# (the CLI tests compile the same programs in many processes). With a size limit JAX locks the
# cache (filelock) while writing, so no process reads a half-written entry.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ssm-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_COMPILATION_CACHE_MAX_SIZE=str(8 * 2**30),
    )


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
