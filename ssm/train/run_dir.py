"""A run folder's bookkeeping: one run at a time, no silent reuse, checked resumes, preemption.

``RunFolder`` is entered once per ``train()``:
- it locks the folder (``.lock``, an OS file lock, released even by ``kill -9``), so a second run
  into the same folder stops with one line;
- a fresh run (``resume=false``) into a folder that holds checkpoints stops with one line, unless
  ``overwrite``, which clears the old run's outputs first;
- a resumed run compares its config with the saved ``config.json``: a changed key that alters
  shapes or semantics stops with one line listing the changed keys; a safe change (loop length,
  logging, checkpointing, learning rates) is allowed and appended to ``resumes.jsonl``.
  ``config.json`` is written by the first run only.

``preemption()`` turns SIGTERM and SIGINT into a flag the loop reads at each step boundary.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import shutil
import signal
from pathlib import Path

from ssm.config import ConfigError

# Keys a resumed run may change: they alter neither shapes nor what the model and data are.
SAFE_TO_CHANGE = frozenset(
    {
        *(
            f"trainer.{key}"
            for key in (
                "epochs",
                "max_steps",
                "output_dir",
                "resume",
                "overwrite",
                "checkpoint_every",
                "keep_checkpoints",
                "eval_every",
                "eval_batch_size",
                "sample_every",
                "sample_length",
                "log_every",
                "progress",
                "tensorboard",
                "grad_accum",
                "devices",
                "fsdp",
                "distributed",
            )
        ),
        *(f"optimizer.{key}" for key in ("lr", "ssm_lr", "weight_decay", "b1", "b2")),
        *(f"scheduler.{key}" for key in ("name", "warmup_steps", "end_ratio")),
    }
)
# What a run writes into its folder (besides Hydra's own .hydra/ and the log).
OUTPUTS = (
    "checkpoints",
    "tensorboard",
    "metrics.jsonl",
    "results.json",
    "samples.jsonl",
    "resumes.jsonl",
    "config.json",
)


class RunFolderError(ConfigError):
    """The run folder is in use, holds another run, or holds a run with another config."""


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; the message says where the checkpoint is and how to resume."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_record(config) -> dict:
    """A config (dataclass) as the JSON-able dict ``config.json`` holds."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def changed_keys(saved: dict, new: dict) -> dict[str, tuple]:
    """``{key: (saved value, new value)}`` of every flattened key that differs."""
    old, now = flatten(saved), flatten(new)
    missing = object()
    return {
        key: (old.get(key), now.get(key))
        for key in sorted(set(old) | set(now))
        if old.get(key, missing) != now.get(key, missing)
    }


def quiet_logs():
    """The one place that sets the log levels of JAX, absl, orbax and TFDS for a run: their
    INFO chatter goes, warnings and errors still show."""
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax._src.xla_bridge", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)


class RunFolder:
    """Context manager over a run's ``output_dir``: lock, fresh/overwrite/resume checks, config.

    Args:
        output_dir: the run's folder (created if missing).
        config: the run's ExperimentConfig.
        resume: whether the run continues the folder's latest checkpoint.
        overwrite: whether a fresh run may clear a folder that holds another run.
    """

    def __init__(self, output_dir, config, *, resume: bool, overwrite: bool = False):
        self.path = Path(output_dir)
        self.config = config_record(config)
        self.resume, self.overwrite = resume, overwrite
        self._lock = None
        self._changes = {}  # the allowed config changes of a resume

    def __enter__(self) -> "RunFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._prepare()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc):
        self._release()

    def _acquire(self):
        lock = open(self.path / ".lock", "a+")  # noqa: SIM115 - closed in _release
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise RunFolderError(
                f"run folder {self.path} is in use by another run ({holder}); wait for it or "
                "choose another hydra.run.dir / trainer.output_dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        self._lock = lock

    def _release(self):
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    @property
    def has_checkpoints(self) -> bool:
        """Whether the folder (or a seed's folder in it) holds a checkpoint."""
        patterns = ("checkpoints/*/*", "seed_*/checkpoints/*/*")
        return any(p.is_dir() for pattern in patterns for p in self.path.glob(pattern))

    def _prepare(self):
        saved_path = self.path / "config.json"
        if not self.resume:
            if self.has_checkpoints or (self.path / "results.json").exists():
                if not self.overwrite:
                    raise RunFolderError(
                        f"run folder {self.path} already holds a run; continue it with "
                        "trainer.resume=true, choose another hydra.run.dir, or replace it with "
                        "trainer.overwrite=true"
                    )
                self.clear()
            saved_path.write_text(json.dumps(self.config, indent=2))
            return
        if not saved_path.exists():
            saved_path.write_text(json.dumps(self.config, indent=2))
            return
        changes = changed_keys(json.loads(saved_path.read_text()), self.config)
        unsafe = [key for key in changes if key not in SAFE_TO_CHANGE]
        if unsafe:
            shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in unsafe)
            raise RunFolderError(
                f"cannot resume the run in {self.path}: the config changed in {shown}; "
                "resume with the saved values or start a new run in another folder"
            )
        self._changes = {k: v for k, v in changes.items() if k != "trainer.resume"}

    def record_resume(self, step: int):
        """Append the resume at ``step`` and its allowed config changes to ``resumes.jsonl``."""
        record = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "step": step,
            "changed": {k: list(v) for k, v in self._changes.items()},
        }
        with open(self.path / "resumes.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def clear(self):
        """Delete the outputs of the run the folder holds (not Hydra's files, not the lock)."""
        for target in [*map(self.path.joinpath, OUTPUTS), *self.path.glob("seed_*")]:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


@contextlib.contextmanager
def preemption():
    """Yields a dict whose ``"signal"`` becomes the signal's name once SIGTERM or SIGINT
    arrives (the loop checkpoints at the next step boundary and stops); the previous handlers
    come back on exit. Outside the main thread signals cannot be caught: nothing is installed."""
    flag = {"signal": None}

    def handler(signum, frame):
        flag["signal"] = signal.Signals(signum).name

    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
