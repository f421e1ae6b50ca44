"""Summarize a sweep: ``python -m experiments.report DIR [--out DIR] [--metric KEY ...]``.

Collects every run folder under ``DIR`` (a Hydra multirun folder: each run has the
``config.json``, ``metrics.jsonl`` and ``results.json`` that ``experiments.train`` writes) into
one Markdown table, printed and written to ``report.md``, with the same numbers in
``report.csv`` and the learning curves in ``report.png``. Runs whose configs differ only in
``trainer.seed`` are one row: mean ± std (n) over the seeds. The columns are the config keys that
vary across the sweep, then the metrics. A run without ``results.json`` is listed as unfinished.
"""

import argparse
import csv
import json
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from ssm.train.run_dir import flatten  # noqa: E402

GROUPED = "trainer.seed"  # runs that differ only here are one configuration
IGNORED = ("trainer.output_dir", GROUPED)  # never a column: they differ in every sweep
MISSING = "-"


class ReportError(Exception):
    """The folder holds no runs, or a requested metric is in none of them; one line."""


@dataclass
class Run:
    """One run folder: its flattened config, metric records and results (None if unfinished)."""

    path: Path
    config: dict | None
    records: list[dict]
    results: dict | None

    @property
    def validations(self) -> list[dict]:
        """The records of the validations during training (not the final results record)."""
        return [
            r
            for r in self.records
            if any(k.startswith("validation/") for k in r)
            and not any(k.startswith("test/") for k in r)
        ]

    def value(self, column: str) -> float | None:
        """A metric column's value: ``final KEY`` from the last validation, else results.json."""
        if column.startswith("final "):
            last = self.validations[-1:] or [{}]
            return last[0].get(column.removeprefix("final "))
        return (self.results or {}).get(column)


@dataclass
class Group:
    """Runs with one configuration (all but their seeds equal)."""

    values: dict  # varying key -> value
    runs: list[Run]

    @property
    def unfinished(self) -> int:
        return sum(run.results is None for run in self.runs)

    def stats(self, column: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std, n) of a column over the finished runs; None where undefined."""
        finished = [run for run in self.runs if run.results is not None]
        values = [v for run in finished if (v := run.value(column)) is not None]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else None
        return mean, std, len(values)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a line cut short by a crash is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def natural(path: Path) -> list:
    """Sort key that puts ``2_...`` before ``10_...``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path) -> list[Run]:
    """Every run folder under ``root`` (one holding ``config.json`` or Hydra's ``.hydra/``; a
    ``trainer.seeds`` run counts as its ``seed_<s>`` runs)."""
    runs = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        if "config.json" not in files and ".hydra" not in subfolders:
            continue
        config = here / "config.json"
        flat = flatten(json.loads(config.read_text())) if config.exists() else None
        if flat is not None and flat.get("trainer.seeds"):
            subfolders[:] = [f for f in subfolders if f.startswith("seed_")]
            continue  # a trainer.seeds run: its seed_<s>/ folders are the runs
        subfolders.clear()  # a run's checkpoints/ and tensorboard/ hold no runs
        results = here / "results.json"
        runs.append(
            Run(
                path=here,
                config=flat,
                records=read_jsonl(here / "metrics.jsonl"),
                results=json.loads(results.read_text()) if results.exists() else None,
            )
        )
    return sorted(runs, key=lambda run: natural(run.path.relative_to(root)))


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys (in config order) whose values differ between runs, but for ``IGNORED``."""
    keys = list(dict.fromkeys(key for run in runs for key in run.config))
    return [
        key
        for key in keys
        if key not in IGNORED and len({json.dumps(run.config.get(key)) for run in runs}) > 1
    ]


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """Runs with a config, grouped by their values of ``keys``, sorted by those values."""
    groups: dict[str, Group] = {}
    for run in runs:
        values = {key: run.config.get(key, MISSING) for key in keys}
        groups.setdefault(json.dumps(values), Group(values, [])).runs.append(run)

    def order(group):
        return [
            (0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, str(v))
            for v in group.values.values()
        ]

    return sorted(groups.values(), key=order)


def default_metrics(runs: list[Run]) -> list[str]:
    """Bits per byte (or token) for language-model runs, else accuracy: test, then validation."""
    keys = {key for run in runs for key in run.results or {}}
    for bits in ("bpb", "bits_per_token"):
        if f"test/{bits}" in keys:
            return [f"test/{bits}", f"validation/{bits}"]
    return ["test/accuracy", "validation/accuracy"]


def metric_columns(metrics: list[str]) -> list[str]:
    """Each metric as results.json has it, and each validation metric also at the last step."""
    columns = list(metrics)
    columns += [f"final {m}" for m in metrics if m.startswith("validation/")]
    return columns


def show(value) -> str:
    """A config value as a table cell (YAML-like: true, null)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|")


def cell(mean, std, n) -> str:
    """``mean ± std (n)``, ``mean (1)``, or ``-`` without values."""
    if mean is None:
        return MISSING
    spread = "" if std is None else f" ± {std:.4f}"
    return f"{mean:.4f}{spread} ({n})"


def markdown(root: Path, runs: list[Run], groups, keys, columns) -> str:
    """The report: a heading, the table, what its numbers are, and the unfinished runs."""
    unfinished = [run for run in runs if run.results is None]
    header = [*keys, *columns] + (["unfinished"] if unfinished else [])
    rows = []
    for group in groups:
        row = [show(group.values[key]) for key in keys]
        row += [cell(*group.stats(column)) for column in columns]
        rows.append(row + ([str(group.unfinished)] if unfinished else []))
    lines = [
        f"# Sweep report: {root}",
        "",
        f"{len(runs)} runs, {len(groups)} configurations, {len(unfinished)} unfinished; "
        f"mean ± std (n) over {GROUPED}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "test/* and validation/* are each run's results.json (its best checkpoint, chosen on "
        "validation); final validation/* is its last validation.",
    ]
    if unfinished:
        lines += ["", "Unfinished (no results.json):"]
        for run in unfinished:
            steps = [r["step"] for r in run.records if "step" in r]
            state = "no config.json" if run.config is None else f"last step {max(steps, default=0)}"
            lines.append(f"- {run.path.relative_to(root)}: {state}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, groups, keys, columns):
    """One row per configuration: its varying values, then mean, std and n of every column."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        stats = [f"{column} {s}" for column in columns for s in ("mean", "std", "n")]
        writer.writerow([*keys, *stats, "runs", "unfinished"])
        for group in groups:
            row = [show(group.values[key]) for key in keys]
            for column in columns:
                row += ["" if v is None else v for v in group.stats(column)]
            finished = len(group.runs) - group.unfinished
            writer.writerow([*row, finished, group.unfinished])


def plot(path: Path, groups, metric: str):
    """Train loss and ``metric`` against step, one line per run, one colour per configuration
    (dashed while unfinished)."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab10" if len(groups) <= 10 else "viridis")
    for index, group in enumerate(groups):
        colour = colours(index if len(groups) <= 10 else index / max(len(groups) - 1, 1))
        label = ", ".join(f"{k}={show(v)}" for k, v in group.values.items()) or "all runs"
        for number, run in enumerate(group.runs):
            style = {"color": colour, "ls": "-" if run.results is not None else "--", "lw": 1.2}
            style["label"] = label if number == 0 else None
            train = [r for r in run.records if "train/loss" in r]
            axes[0].plot([r["step"] for r in train], [r["train/loss"] for r in train], **style)
            style["label"] = None
            val = [r for r in run.validations if metric in r]
            axes[1].plot([r["step"] for r in val], [r[metric] for r in val], marker=".", **style)
    for axis, name in zip(axes, ("train/loss", metric), strict=True):
        axis.set(xlabel="step", ylabel=name, title=name)
        axis.grid(alpha=0.3)
    figure.legend(loc="lower center", ncol=min(len(groups), 3), fontsize="small", frameon=False)
    rows = -(-len(groups) // 3)
    figure.tight_layout(rect=(0, min(0.06 * rows, 0.5), 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(root, out=None, metrics: list[str] | None = None) -> str:
    """Write ``report.md``, ``report.csv`` and ``report.png`` of the sweep in ``root`` into
    ``out`` (default ``root``) and return the Markdown.

    Raises:
        ReportError: ``root`` holds no run, or a metric is in no run's results.json.
    """
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder")
    runs = find_runs(root)
    configured = [run for run in runs if run.config is not None]
    if not configured:
        raise ReportError(f"no runs in {root} (no folder under it holds a config.json)")
    available = sorted({key for run in runs for key in run.results or {} if "/" in key})
    metrics = metrics or default_metrics(runs)
    unknown = [m for m in metrics if available and m not in available]
    if unknown:
        raise ReportError(
            f"--metric {unknown[0]} is in no results.json; available: {', '.join(available)}"
        )
    keys = varying_keys(configured)
    groups = group_runs(configured, keys)
    columns = metric_columns(metrics)
    text = markdown(root, runs, groups, keys, columns)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    write_csv(out / "report.csv", groups, keys, columns)
    first = f"validation/{metrics[0].split('/')[-1]}"
    curve = next((m for m in metrics if m.startswith("validation/")), first)
    plot(out / "report.png", groups, curve)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep", help="a multirun folder (or any folder holding run folders)")
    parser.add_argument("--out", help="where report.md/.csv/.png go (default: the sweep folder)")
    parser.add_argument(
        "--metric",
        action="append",
        help="a results.json key to report (repeatable; default: test and validation accuracy, "
        "or bpb / bits_per_token for language models)",
    )
    args = parser.parse_args(argv)
    try:
        text = report(args.sweep, args.out, args.metric)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(text, end="")
    where = args.out or args.sweep
    print(f"wrote report.md, report.csv and report.png to {where}", file=sys.stderr)


if __name__ == "__main__":
    main()
