"""The run folder's bookkeeping: lock, no silent reuse, checked resumes, preemption flag."""

import json
import os
import signal
import subprocess
import sys

import pytest

from ssm.train import experiment_config
from ssm.train.run_dir import (
    SAFE_TO_CHANGE,
    RunFolder,
    RunFolderError,
    changed_keys,
    preemption,
)


def config(output_dir, d_model=8, **trainer):
    return experiment_config(
        {
            "layer": {"name": "s4d", "d_state": 8},
            "dataset": {"name": "digits"},
            "model": {"d_model": d_model, "n_layers": 1},
            "trainer": {"output_dir": str(output_dir), "batch_size": 32, **trainer},
        }
    )


def used(folder):
    """Make ``folder`` look like it holds a finished run."""
    (folder / "checkpoints" / "latest" / "3").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 3}\n')
    (folder / "results.json").write_text("{}")
    (folder / ".hydra").mkdir()


def test_a_second_run_into_a_locked_folder_is_refused_in_one_line(tmp_path):
    with RunFolder(tmp_path, config(tmp_path), resume=False):
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            with RunFolder(tmp_path, config(tmp_path), resume=False):
                pass
    with RunFolder(tmp_path, config(tmp_path), resume=True):  # released on exit
        pass


def test_the_lock_dies_with_its_process_even_by_sigkill(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('held', flush=True); time.sleep(60)",
            str(tmp_path / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderError, match="in use by another run"):
        RunFolder(tmp_path, config(tmp_path), resume=False).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunFolder(tmp_path, config(tmp_path), resume=False):
        pass


def test_a_fresh_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path):
    used(tmp_path)
    with pytest.raises(RunFolderError, match=r"already holds a run; .*trainer\.resume=true"):
        with RunFolder(tmp_path, config(tmp_path), resume=False):
            pass
    assert (tmp_path / "results.json").exists()  # nothing was touched
    with RunFolder(tmp_path, config(tmp_path, d_model=16), resume=False, overwrite=True):
        pass
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "results.json").exists()
    assert (tmp_path / ".hydra").is_dir()  # Hydra's files stay
    assert json.loads((tmp_path / "config.json").read_text())["model"]["d_model"] == 16


def test_resume_refuses_a_changed_shape_or_semantic_key_listing_them_in_one_line(tmp_path):
    with RunFolder(tmp_path, config(tmp_path), resume=False):
        pass
    saved = (tmp_path / "config.json").read_text()
    changed = config(tmp_path, d_model=16, batch_size=64, seed=3, resume=True)
    with pytest.raises(RunFolderError) as error:
        with RunFolder(tmp_path, changed, resume=True):
            pass
    message = str(error.value)
    assert "\n" not in message
    listed = "model.d_model (8 -> 16), trainer.batch_size (32 -> 64), trainer.seed (0 -> 3);"
    assert listed in message
    assert (tmp_path / "config.json").read_text() == saved


def test_resume_allows_safe_changes_records_them_and_keeps_config_json(tmp_path):
    with RunFolder(tmp_path, config(tmp_path), resume=False):
        pass
    saved = (tmp_path / "config.json").read_text()
    longer = config(tmp_path, resume=True, max_steps=500, log_every=5)
    with RunFolder(tmp_path, longer, resume=True) as folder:
        folder.record_resume(40)
    assert (tmp_path / "config.json").read_text() == saved
    (record,) = [json.loads(line) for line in (tmp_path / "resumes.jsonl").open()]
    assert record["step"] == 40
    assert record["changed"] == {"trainer.log_every": [20, 5], "trainer.max_steps": [None, 500]}


def test_changed_keys_compare_nested_values_and_the_safe_set_spares_model_and_data():
    assert changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == {
        "a.c": (2, 3),
        "d": (None, 4),
    }
    assert not any(k.split(".")[0] in ("model", "layer", "dataset") for k in SAFE_TO_CHANGE)
    assert "trainer.batch_size" not in SAFE_TO_CHANGE and "trainer.seed" not in SAFE_TO_CHANGE


def test_preemption_turns_sigterm_into_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with preemption() as flag:
        assert flag["signal"] is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
