"""What a user meets at the CLI when runs go wrong: one line each, and nothing lost."""

import os
import shutil
import signal
import subprocess
import sys

from test_train_cli import ROOT, TINY, run_cli


def error_lines(process) -> list[str]:
    assert "Traceback" not in process.stderr, process.stderr
    return [line for line in process.stderr.splitlines() if line.startswith("error:")]


def test_cli_huge_lr_reuse_changed_resume_and_damage_each_say_one_line_and_a_sane_lr_resumes(
    tmp_path,
):
    run = [*TINY, f"hydra.run.dir={tmp_path}", "trainer.max_steps=4", "trainer.log_every=1"]
    diverged = run_cli(*run, "optimizer.lr=1e39")
    assert diverged.returncode == 1
    (line,) = error_lines(diverged)
    assert "diverged at step 1" in line and "last good checkpoint: step 0 in" in line

    again = run_cli(*run)
    assert again.returncode == 1
    (line,) = error_lines(again)
    assert "already holds a run" in line and "trainer.overwrite=true" in line

    wider = run_cli(*run, "trainer.resume=true", "model.d_model=16")
    assert wider.returncode == 1
    (line,) = error_lines(wider)
    assert "the config changed in model.d_model (8 -> 16)" in line

    sane = run_cli(*run, "trainer.resume=true", "optimizer.lr=3e-3")
    assert sane.returncode == 0, sane.stderr
    assert "resumed from step 0" in sane.stdout and "test accuracy:" in sane.stdout

    # A damaged newest checkpoint falls back to the one before, with one warning line.
    shutil.rmtree(tmp_path / "checkpoints" / "latest" / "4" / "default")
    longer = run_cli(*run, "trainer.max_steps=6", "trainer.resume=true")
    assert longer.returncode == 0, longer.stderr
    (warning,) = [
        line for line in (longer.stdout + longer.stderr).splitlines() if "is damaged" in line
    ]
    assert "checkpoint step 4" in warning and warning.endswith("falling back to step 0")
    assert "resumed from step 0" in longer.stdout


def test_cli_sigterm_checkpoints_exits_0_saying_how_to_resume_and_a_concurrent_run_is_refused(
    tmp_path,
):
    run = [*TINY, f"hydra.run.dir={tmp_path}", "trainer.max_steps=100000", "trainer.log_every=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *run],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stdout:
            if line.startswith("step 1:"):
                break
        second = run_cli(*run, "trainer.resume=true")
        assert second.returncode == 1
        (line,) = error_lines(second)
        assert f"is in use by another run (pid {process.pid})" in line
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    (stopped,) = [line for line in out.splitlines() if line.startswith("stopped: SIGTERM")]
    step = int(stopped.split("at step ")[1].split(":")[0])
    assert "trainer.resume=true" in stopped
    assert (tmp_path / "checkpoints" / "latest" / str(step)).is_dir()
