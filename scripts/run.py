#!/usr/bin/env python3
"""Self-installing entry point for the README's two commands.

    python3 scripts/run.py train [hydra overrides ...]   # the default experiment, offline
    python3 scripts/run.py test  [pytest args ...]       # the test suite

Creates ``.venv`` next to ``pyproject.toml`` on first use and (re)installs the project with its
``dev`` extra whenever ``pyproject.toml`` changes; then runs the command inside it. Idempotent.
Needs only Python >= 3.11.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".installed-pyproject-sha256"
COMMANDS = {
    "train": ["-m", "experiments.train"],
    "test": ["-m", "pytest", "-n", "2", "--dist", "loadfile", "--durations=15"],
}


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older Python
        sys.exit(f"Python >= 3.11 is required, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing the project and its dev extra into .venv (first run only)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(digest)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 scripts/run.py {{{'|'.join(COMMANDS)}}} [args ...]")
    ensure_environment()
    command = [str(PYTHON), *COMMANDS[sys.argv[1]], *sys.argv[2:]]
    sys.exit(subprocess.run(command, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
