"""benchmarks/presets.py: runs presets through the CLI and times their training steps."""

import json

from benchmarks import presets


def test_step_time_leaves_out_the_compiling_step_and_evaluations():
    lines = [
        (0.0, "[absl][INFO] - Created directory"),
        (30.0, "step 1: train/loss=1.0 train/accuracy=0.1"),  # compile + step 1: left out
        (50.0, "step 1: epoch=1.0 validation/loss=1.0"),  # evaluation ends this span: left out
        (52.0, "step 2: train/loss=0.9 train/accuracy=0.2"),  # 1 step in 2 s
        (58.0, "step 4: train/loss=0.8 train/accuracy=0.3"),  # 2 steps in 6 s
        (90.0, "step 4: epoch=2.0 validation/loss=0.8"),
    ]
    assert presets.seconds_per_step(lines) == 8.0 / 3
    assert presets.seconds_per_step(lines[:2]) is None


def test_a_preset_runs_and_is_reported(tmp_path):
    out = tmp_path / "out"
    argv = ["--only", "synthetic/adding-s4d", "--size", "tiny", "--steps", "3", "--out", str(out)]
    assert presets.main([*argv, "--set", "trainer.log_every=1"]) == 0
    (row,) = json.loads((out / "presets.json").read_text())["rows"]
    assert row["status"] == "ok" and 0 <= row["test_accuracy"] <= 1
    assert row["seconds_per_step"] > 0 and row["peak_gib"] > 0.1
    assert "step 3: train/loss=" in (out / "synthetic/adding-s4d/stdout.log").read_text()
    assert presets.presets("synthetic/adding-*") == ["synthetic/adding-s4d"]
