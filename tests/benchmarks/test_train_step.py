"""benchmarks/train_step.py: times the trainer's step and a plain-JAX step of each case."""

import json

import pytest

from benchmarks import train_step


@pytest.mark.parametrize("case, dtype", [("listops", "bfloat16"), ("mamba_lm", "float32")])
def test_train_step_times_the_trainer_and_plain_step_with_and_without_host_sync(
    case, dtype, tmp_path, capsys
):
    argv = ["--shapes", "tiny", "--cases", case, "--dtypes", dtype, "--steps", "2"]
    rows = train_step.main([*argv, "--repeats", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "train_step.json").read_text()) == rows
    assert {(r["case"], r["dtype"], r["sync"]) for r in rows} == {
        (case, dtype, "sync"),
        (case, dtype, "async"),
    }
    assert all(r["ms_per_step"] > 0 and r["plain_ms_per_step"] > 0 for r in rows)
    assert capsys.readouterr().out.count(f"\n{case} ") == 2
