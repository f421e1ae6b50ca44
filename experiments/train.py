"""Train a model: ``python -m experiments.train [experiment=...] [group.key=value ...]``."""

import logging
import sys

import hydra
import jax
from omegaconf import DictConfig, OmegaConf

from ssm.config import ConfigError
from ssm.data.manual import MissingDataError
from ssm.train import TrainingDiverged, experiment_config, train

logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU" noise


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
    except (ConfigError, MissingDataError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    except jax.errors.JaxRuntimeError as error:
        if (message := out_of_memory(error)) is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(
        f"test accuracy: {results['test/accuracy']:.4f} "
        f"(validation {results['validation/accuracy']:.4f}, best step {results['best_step']}) "
        f"-> {config.trainer.output_dir}",
        flush=True,
    )
    return results["validation/accuracy"]


if __name__ == "__main__":
    main()
