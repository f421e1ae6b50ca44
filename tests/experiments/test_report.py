"""The sweep report: seeds grouped into mean ± std (n), swept keys as columns, csv, png, errors."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from experiments.report import ReportError, main, report

ROOT = Path(__file__).resolve().parents[2]


def config(out, seed, lr=1e-3, d_model=8):
    """A config.json as ``experiments.train`` writes it (nested, every group)."""
    return {
        "layer_name": "s4d",
        "layer": {"d_state": 8, "init": "legs", "impl": "auto"},
        "dataset_name": "digits",
        "dataset": {"data_dir": None, "split_seed": 0, "size": "full"},
        "model": {"d_model": d_model, "n_layers": 1, "dropout": 0.2, "pooling": "mean"},
        "optimizer": {"lr": lr, "ssm_lr": 0.001, "weight_decay": 0.05, "grad_clip": None},
        "scheduler": {"name": "cosine", "warmup_steps": 50, "end_ratio": 0.0},
        "trainer": {"objective": "classify", "seed": seed, "max_steps": 40, "output_dir": str(out)},
        "name": "sequential/digits-s4d",
    }


def write_run(
    sweep,
    name,
    *,
    seed,
    lr=1e-3,
    d_model=8,
    test=0.5,
    val=0.6,
    final_val=0.55,
    lm=False,
    finished=True,
):
    """A run folder with the files ``train()`` writes: config.json, metrics.jsonl (train and
    validation records at steps 20 and 40, then the results record), results.json."""
    out = sweep / name
    (out / ".hydra").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config(out, seed, lr, d_model), indent=2))
    metric = "bpb" if lm else "accuracy"
    records = [
        {"step": 20, "train/loss": 2.0 + seed, "train/accuracy": 0.3},
        {"step": 20, "epoch": 0.5, "validation/loss": 1.9, f"validation/{metric}": val},
        {"step": 40, "train/loss": 1.5 + seed, "train/accuracy": 0.4},
        {"step": 40, "epoch": 1.0, "validation/loss": 1.8, f"validation/{metric}": final_val},
    ]
    results = {"step": 40, "best_step": 20, "validation/loss": 1.9, f"validation/{metric}": val}
    results |= {"test/loss": 1.95, f"test/{metric}": test}
    if lm:
        results |= {"unigram/bpb": 4.0, "validation/perplexity": 3.0, "test/perplexity": 3.1}
    lines = [json.dumps(r) for r in records]
    if finished:
        lines.append(json.dumps({"step": 40, **{k: v for k, v in results.items() if "/" in k}}))
        (out / "results.json").write_text(json.dumps(results, indent=2))
    else:
        lines[-1] = lines[-1][:25]  # the line a crash cut short
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture
def sweep(tmp_path):
    """optimizer.lr in {0.001, 0.003} x trainer.seed: 3 seeds at 0.001, 2 at 0.003."""
    root = tmp_path / "multirun"
    for num, (lr, seed, test, val) in enumerate(
        [
            (1e-3, 0, 0.5, 0.60),
            (1e-3, 1, 0.6, 0.70),
            (1e-3, 2, 0.7, 0.80),
            (3e-3, 0, 0.8, 0.90),
            (3e-3, 1, 0.9, 0.95),
        ]
    ):
        write_run(root, f"{num}_lr={lr},seed={seed}", seed=seed, lr=lr, test=test, val=val)
    return root


def table(text):
    """The Markdown table's rows as lists of cells (header first, separator dropped)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows if "---" not in row]


def test_runs_differing_only_in_seed_are_one_row_of_mean_and_sample_std(sweep):
    rows = table(report(sweep))
    assert rows[0] == [
        "optimizer.lr",
        "test/accuracy",
        "validation/accuracy",
        "final validation/accuracy",
    ]
    # lr=0.001: test 0.5, 0.6, 0.7 -> mean 0.6, std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    # lr=0.003: test 0.8, 0.9 -> mean 0.85, std sqrt(2 * 0.05^2 / 1) = 0.0707
    assert rows[1] == ["0.001", "0.6000 ± 0.1000 (3)", "0.7000 ± 0.1000 (3)", "0.5500 ± 0.0000 (3)"]
    assert rows[2] == ["0.003", "0.8500 ± 0.0707 (2)", "0.9250 ± 0.0354 (2)", "0.5500 ± 0.0000 (2)"]
    assert len(rows) == 3


def test_varying_columns_are_the_swept_keys_in_config_order_without_seed_and_output_dir(tmp_path):
    for num, (d_model, lr) in enumerate([(8, 1e-3), (16, 1e-3), (8, 3e-3), (16, 3e-3)]):
        write_run(tmp_path, f"{num}", seed=num, lr=lr, d_model=d_model)
    rows = table(report(tmp_path))
    assert rows[0][:2] == ["model.d_model", "optimizer.lr"]
    assert [row[:2] for row in rows[1:]] == [
        ["8", "0.001"],
        ["8", "0.003"],
        ["16", "0.001"],
        ["16", "0.003"],
    ]
    assert all(row[2].endswith("(1)") and "±" not in row[2] for row in rows[1:])


def test_seeds_alone_give_one_row_without_config_columns(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"{seed}_seed={seed}", seed=seed, test=0.25 + 0.5 * seed)
    rows = table(report(tmp_path))
    assert rows[0][0] == "test/accuracy" and len(rows) == 2
    assert rows[1][0] == f"0.5000 ± {math.sqrt(0.125):.4f} (2)"


def test_final_validation_comes_from_the_last_validation_record(tmp_path):
    write_run(tmp_path, "0", seed=0, val=0.9, final_val=0.7)
    write_run(tmp_path, "1", seed=1, val=0.8, final_val=0.5)
    row = table(report(tmp_path))[1]
    assert row[1:] == ["0.8500 ± 0.0707 (2)", "0.6000 ± 0.1414 (2)"]


def test_unfinished_runs_are_listed_and_left_out_of_the_means(sweep):
    write_run(sweep, "5_lr=0.003,seed=2", seed=2, lr=3e-3, test=0.0, finished=False)
    (sweep / "6_lr=0.01,seed=0" / ".hydra").mkdir(parents=True)  # stopped before config.json
    text = report(sweep)
    rows = table(text)
    assert rows[0][-1] == "unfinished"
    assert rows[2] == [
        "0.003",
        "0.8500 ± 0.0707 (2)",
        "0.9250 ± 0.0354 (2)",
        "0.5500 ± 0.0000 (2)",
        "1",
    ]
    assert rows[1][-1] == "0"
    assert "7 runs, 2 configurations, 2 unfinished" in text
    assert "- 5_lr=0.003,seed=2: last step 40" in text
    assert "- 6_lr=0.01,seed=0: no config.json" in text


def test_csv_has_one_row_per_configuration_with_mean_std_and_n(sweep, tmp_path):
    out = tmp_path / "report"
    report(sweep, out)
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["optimizer.lr"] for row in rows] == ["0.001", "0.003"]
    assert float(rows[0]["test/accuracy mean"]) == pytest.approx(0.6)
    assert float(rows[0]["test/accuracy std"]) == pytest.approx(0.1)
    assert float(rows[1]["test/accuracy std"]) == pytest.approx(math.sqrt(0.005))
    assert [row["test/accuracy n"] for row in rows] == ["3", "2"]
    assert [(row["runs"], row["unfinished"]) for row in rows] == [("3", "0"), ("2", "0")]
    assert (out / "report.md").read_text().startswith(f"# Sweep report: {sweep}")


def test_png_of_the_learning_curves_is_written_and_not_blank(sweep):
    report(sweep)
    path = sweep / "report.png"
    assert path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (540, 1440)
    assert image[..., :3].std() > 0.05  # lines, not an empty canvas


def test_language_model_runs_report_bits_per_byte(tmp_path):
    write_run(tmp_path, "0", seed=0, lm=True, test=1.5, val=1.4, final_val=1.45)
    write_run(tmp_path, "1", seed=1, lm=True, test=1.7, val=1.6, final_val=1.65)
    rows = table(report(tmp_path))
    assert rows[0] == ["test/bpb", "validation/bpb", "final validation/bpb"]
    assert rows[1] == ["1.6000 ± 0.1414 (2)", "1.5000 ± 0.1414 (2)", "1.5500 ± 0.1414 (2)"]


def test_metric_option_picks_the_columns(sweep):
    rows = table(report(sweep, metrics=["test/loss"]))
    assert rows[0] == ["optimizer.lr", "test/loss"]
    assert rows[1][1] == "1.9500 ± 0.0000 (3)"


def test_unknown_metric_is_a_one_line_error_naming_the_available_keys(sweep):
    with pytest.raises(ReportError) as error:
        report(sweep, metrics=["test/f1"])
    assert str(error.value) == (
        "--metric test/f1 is in no results.json; available: test/accuracy, test/loss, "
        "validation/accuracy, validation/loss"
    )


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_folder_without_runs_is_a_one_line_error(tmp_path, capsys, make):
    folder = tmp_path / "multirun"
    make(folder)
    with pytest.raises(SystemExit) as stop:
        main([str(folder)])
    assert stop.value.code == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("error: ")
    assert str(folder) in message and not (folder / "report.md").exists()


def test_report_of_a_real_two_seed_multirun(tmp_path, capsys):
    overrides = ["model.d_model=8", "model.n_layers=1", "layer.d_state=8", "trainer.progress=false"]
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "-m", "trainer.seed=0,1"]
        + ["trainer.max_steps=4", "dataset.size=tiny", "trainer.tensorboard=false", *overrides],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    main([str(tmp_path / "multirun"), "--out", str(tmp_path / "report")])
    rows = table(capsys.readouterr().out)
    assert rows[0] == ["test/accuracy", "validation/accuracy", "final validation/accuracy"]
    assert len(rows) == 2 and all(cell.endswith("(2)") for cell in rows[1])
    results = [json.loads(p.read_text()) for p in tmp_path.glob("multirun/**/results.json")]
    mean = sum(r["test/accuracy"] for r in results) / 2
    assert rows[1][0].startswith(f"{mean:.4f} ± ")
    assert (tmp_path / "report" / "report.png").stat().st_size > 0
