"""Score a trained run: ``python -m experiments.evaluate run=DIR [split=test] [+dataset.K=V]``.

Loads the run's config and best (or latest) checkpoint, changes the given dataset options (for
example ``+dataset.eval_seq_len=4096`` to test length generalization), prints one line with the
loss and accuracy and appends the same numbers to ``DIR/evaluations.jsonl``. ``-m`` with
comma-separated values evaluates each in turn.
"""

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ssm.config import ConfigError
from ssm.train import evaluate_run

logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU" noise
logging.getLogger("absl").setLevel(logging.WARNING)  # no orbax INFO lines per restore


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        overrides = dict(raw["dataset"] or {})
        results = evaluate_run(raw["run"], raw["split"], raw["checkpoint"], **overrides)
    except MissingMandatoryValue:
        print("error: give run=DIR, a folder written by experiments.train", file=sys.stderr)
        sys.exit(1)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    split = raw["split"]
    changed = " ".join(f"dataset.{k}={v}" for k, v in overrides.items())
    record = {"split": split, "checkpoint": raw["checkpoint"], "dataset": overrides, **results}
    with open(Path(raw["run"]) / "evaluations.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    print(
        f"{split} accuracy: {results[f'{split}/accuracy']:.4f} "
        f"(loss {results[f'{split}/loss']:.4f}; {raw['checkpoint']} step {results['step']}"
        f"{'; ' + changed if changed else ''}) <- {raw['run']}",
        flush=True,
    )
    return results[f"{split}/accuracy"]


if __name__ == "__main__":
    main()
