"""Runs for tests/train/test_parallel.py, in a subprocess with a chosen number of CPU devices.

python tests/train/parallel_runs.py <folder> <name> devices=<n|none> max_steps=<n> ...
"""

import json
import sys

import jax

from ssm.train import experiment_config, train


def config(folder, **trainer):
    return experiment_config(
        {
            "layer": {"name": "s4d", "d_state": 8},
            "dataset": {"name": "digits"},
            "model": {"d_model": 8, "n_layers": 1, "dropout": 0.1, "norm": "batch"},
            "optimizer": {"lr": 3e-3},
            "scheduler": {"name": "constant"},
            "trainer": {
                "batch_size": 256,
                "eval_batch_size": 128,
                "log_every": 1,
                "output_dir": str(folder),
                "progress": False,
                "tensorboard": False,
                **trainer,
            },
        }
    )


if __name__ == "__main__":
    folder, runs = sys.argv[1], json.loads(sys.argv[2])
    out = {"devices": jax.device_count()}
    for name, trainer in runs.items():
        out[name] = train(config(f"{folder}/{name}", **trainer))
    print(json.dumps(out))
