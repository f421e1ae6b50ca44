"""Metrics to stdout, a JSONL file and TensorBoard event files, safe across crashes and resumes."""

import json
import os
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Each line is flushed and fsynced, so a crash loses at most the line being written. On resume
    at ``resume_step`` the file is rewritten (atomically) without lines past that step, so a
    resumed run's file reads exactly as an uninterrupted run's.
    """

    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True, resume_step=None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keep_until(resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=purge)

    def _keep_until(self, step):
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if step is not None and record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, float], *, echo: bool = True):
        """Record ``metrics`` (names like 'train/loss') at ``step``."""
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(name, float(value), int(step))
            self._tb.flush()
        if echo:
            shown = " ".join(f"{k}={float(v):.4f}" for k, v in metrics.items())
            print(f"step {step}: {shown}", flush=True)

    def close(self):
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(output_dir: str | Path) -> list[dict]:
    """All records of a run's ``metrics.jsonl``."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
