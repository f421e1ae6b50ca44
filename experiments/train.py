"""Train a model: ``python -m experiments.train [experiment=...] [group.key=value ...]``."""

import sys

import hydra
import jax
from omegaconf import DictConfig, OmegaConf

from ssm.config import ConfigError
from ssm.data.manual import MissingDataError
from ssm.train import TrainingDiverged, experiment_config, train
from ssm.train.checkpoint import CheckpointError
from ssm.train.run_dir import Preempted, quiet_logs

quiet_logs()  # before JAX starts: no "no TPU" noise


def resolve(cfg: DictConfig):
    """The typed ExperimentConfig of a composed Hydra config."""
    return experiment_config(OmegaConf.to_container(cfg, resolve=True))


def out_of_memory(error: Exception) -> str | None:
    """A one-line message if ``error`` is XLA running out of device or host memory, else None."""
    text = str(error)
    if not isinstance(error, jax.errors.JaxRuntimeError) or not (
        "RESOURCE_EXHAUSTED" in text or "Out of memory" in text
    ):
        return None
    reason = " ".join(text.strip().splitlines()[0].split())
    return f"out of memory ({reason}); try a smaller trainer.batch_size"


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        config = resolve(cfg)
        results = train(config)
    except (ConfigError, MissingDataError, TrainingDiverged, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Preempted as stop:
        print(f"stopped: {stop}", flush=True)
        sys.exit(0)
    except jax.errors.JaxRuntimeError as error:
        if (message := out_of_memory(error)) is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(summary_line(results, config.trainer.output_dir), flush=True)
    return results["validation/accuracy"]


def summary_line(results: dict, output_dir: str) -> str:
    """The run's final line: test accuracy, or for a language model its bits per byte (or
    token) beside the unigram baseline's; with ``trainer.seeds``, means ± std over seeds."""

    def shown(key: str) -> str:
        std = results.get(f"{key}_std")
        return f"{results[key]:.4f}" + ("" if std is None else f" ± {std:.4f}")

    where = f"best step {results['best_step']}) -> {output_dir}"
    bits = next((k[5:] for k in ("test/bpb", "test/bits_per_token") if k in results), None)
    if bits is None:
        return (
            f"test accuracy: {shown('test/accuracy')} "
            f"(validation {shown('validation/accuracy')}, {where}"
        )
    baseline = results.get(f"unigram/{bits}")
    beside = "" if baseline is None else f", unigram baseline {baseline:.4f}"
    return (
        f"test {bits}: {shown(f'test/{bits}')} (validation "
        f"{shown(f'validation/{bits}')}{beside}, {where}"
    )


if __name__ == "__main__":
    main()
