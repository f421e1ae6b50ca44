"""Run every experiment preset briefly through the training CLI and print one row per preset.

    python -m benchmarks.presets [--steps 50] [--size small] [--only 'lra/*'] [--set KEY=VALUE]

For each ``configs/experiment/**.yaml`` (or those matching ``--only``, a glob), runs
``python -m experiments.train experiment=<preset> dataset.size=<size> trainer.max_steps=<steps>``
at the preset's own model size in a subprocess, then prints: preset, status (``ok``, ``missing
data`` when a downloaded release is absent, ``failed``), wall minutes (startup, data preparation,
compile, training and evaluation), seconds per training step (from the times the run prints its
logged steps, leaving out the first, which compiles, and any evaluation), peak resident memory
(GiB) and test accuracy. ``--set`` adds overrides to every run (``--set trainer.log_every=1``
times short runs). Writes ``presets.json``, and each run's output with its ``stdout.log`` and
``stderr.log``, under ``--out``. Runs one preset at a time: the long-sequence presets need most of
a 24 GiB machine's memory.
"""

import argparse
import fnmatch
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "experiment"
ACCURACY = re.compile(r"^test accuracy: ([0-9.]+)", re.MULTILINE)
EXCEPTION = re.compile(r"^[\w.]+(Error|Exception)\b")  # the last line of a traceback
LOGGED_STEP = re.compile(r"^step (\d+): (\S+?)=")  # the trainer's echo of logged metrics


def seconds_per_step(lines: list[tuple[float, str]]) -> float | None:
    """Mean seconds per training step from ``(time, line)`` pairs of a run's output.

    Uses the spans that end at a ``step N: train/...`` line and start at the echo line before it,
    so neither the first logged step (which compiles) nor an evaluation (whose echo line ends
    its span) is counted. None if there is no such span.
    """
    seconds = steps = 0.0
    previous = None  # (time, step) of the last echo line
    for when, line in lines:
        match = LOGGED_STEP.match(line)
        if not match:
            continue
        step = int(match.group(1))
        if previous is not None and match.group(2).startswith("train/") and step > previous[1]:
            seconds += when - previous[0]
            steps += step - previous[1]
        previous = (when, step)
    return seconds / steps if steps else None


def presets(pattern: str) -> list[str]:
    """Preset names (``lra/listops-s4d``) matching the glob ``pattern``, sorted."""
    names = sorted(str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.rglob("*.yaml"))
    return [name for name in names if fnmatch.fnmatch(name, pattern)]


def run(preset: str, args) -> dict:
    """Train ``preset`` through the CLI; its status, minutes, test accuracy and last error line."""
    out = args.out / preset
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"experiment={preset}",
        f"dataset.size={args.size}",
        f"trainer.max_steps={args.steps}",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "trainer.overwrite=true",  # a rerun replaces the last one
        f"trainer.output_dir={out}",
        f"hydra.run.dir={out}/hydra",
        *args.set,
    ]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "stderr.log", "w+") as stderr_file:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr_file, text=True
        )
        lines = [(time.perf_counter(), line) for line in process.stdout]  # timed as printed
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = returncode = os.waitstatus_to_exitcode(status)
        stderr_file.seek(0)
        stderr = stderr_file.read()
    minutes = (time.perf_counter() - start) / 60
    stdout = "".join(line for _, line in lines)
    (out / "stdout.log").write_text(stdout)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")] or [
        line for line in stderr.splitlines() if EXCEPTION.match(line)
    ]
    error = errors[-1] if errors else (stderr.strip().splitlines() or [""])[-1]
    if returncode < 0:  # e.g. SIGKILL from the out-of-memory killer: nothing on stderr
        error = f"killed by signal {-returncode} (9 is often out of memory); {error}"
    match = ACCURACY.search(stdout)
    if returncode == 0 and match:
        status, error = "ok", ""
    elif errors and " not found: expected " in error:
        status = "missing data"
    else:
        status = "failed"
    return {
        "preset": preset,
        "status": status,
        "minutes": minutes,
        "seconds_per_step": seconds_per_step(lines),
        "peak_gib": usage.ru_maxrss / 2**20,  # resident memory, KiB on Linux
        "test_accuracy": float(match.group(1)) if match else None,
        "error": error,
        "command": " ".join(command[1:]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", default="small", choices=["full", "small", "tiny"])
    parser.add_argument("--only", default="*", help="glob over preset names, e.g. 'lra/*'")
    parser.add_argument("--set", action="append", default=[], help="extra override, repeatable")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "outputs/benchmarks/presets")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    names = presets(args.only)
    if not names:
        parser.error(f"no preset matches {args.only!r}; presets are under {PRESETS}")
    print(f"{len(names)} presets, {args.steps} steps at dataset.size={args.size}", flush=True)
    header = (
        f"{'preset':<36} {'status':<13} {'minutes':>8} {'s/step':>7} {'GiB':>5} {'test acc':>9}"
    )
    print(header, flush=True)
    rows = []
    for name in names:
        row = run(name, args)
        rows.append(row)
        accuracy = "" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        step = "" if row["seconds_per_step"] is None else f"{row['seconds_per_step']:.2f}"
        print(
            f"{name:<36} {row['status']:<13} {row['minutes']:>8.1f} {step:>7} "
            f"{row['peak_gib']:>5.1f} {accuracy:>9}",
            flush=True,
        )
        if row["error"]:
            print(f"    {row['error']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"steps": args.steps, "size": args.size, "overrides": args.set, "rows": rows}
    (args.out / "presets.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'presets.json'}")
    return 0 if all(row["status"] != "failed" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
