"""Sample from a saved language model or a trained causal_lm run.

``python -m experiments.generate checkpoint=DIR prompt="1 2 3" max_new_tokens=20 temperature=0``
prints the prompt and the generated token ids on one line, separated by spaces. ``DIR`` is a
folder written by ``ssm.models.save_lm``, or a training run's folder (its best checkpoint): for a
run on byte-level text (``dataset=bytes``) the prompt is text and the output is text.
"""

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
import jax
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ssm.config import ConfigError, from_mapping
from ssm.models import generate as generate_tokens
from ssm.models import load_lm
from ssm.train import load_model
from ssm.train.config import run_config

logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU" noise


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Options of one generation run (see configs/generate.yaml)."""

    checkpoint: str
    prompt: str | int | tuple[int, ...] = "0"
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_token: int | None = None
    seed: int = 0


def prompt_tokens(prompt: str | int | tuple[int, ...]) -> list[int]:
    """Token ids of a prompt given as "1 2 3", "1,2,3", 1 or (1, 2, 3)."""
    if isinstance(prompt, int):
        return [prompt]
    if isinstance(prompt, str):
        try:
            return [int(t) for t in prompt.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(
                f"prompt={prompt!r} must be integer token ids separated by spaces"
            ) from None
    return list(prompt)


def is_run(path) -> bool:
    """Whether ``path`` is a training run's folder (it holds config.json)."""
    return (Path(path) / "config.json").is_file()


def load(path):
    """(model, vocabulary size, byte_level) of a save_lm folder or a causal_lm run folder."""
    if not is_run(path):
        model = load_lm(path)
        return model, model.vocab_size, False
    objective = run_config(path).trainer.objective
    if objective != "causal_lm":
        raise ConfigError(
            f"checkpoint={path} was trained with trainer.objective={objective}; "
            "generation needs a causal_lm run"
        )
    model, spec = load_model(path)
    return model, spec.vocab_size, spec.byte_level


def generate(config: GenerateConfig) -> list[int] | str:
    """Load the checkpoint and return the prompt followed by the generated tokens (as text,
    bytes decoded as UTF-8 with replacement, for a byte-level run)."""
    model, vocab_size, byte_level = load(config.checkpoint)
    if byte_level:
        prompt = list(str(config.prompt).encode())
    else:
        prompt = prompt_tokens(config.prompt)
    if not prompt or not all(0 <= t < vocab_size for t in prompt):
        raise ConfigError(f"prompt={prompt} must be non-empty token ids in [0, {vocab_size})")
    tokens = generate_tokens(
        model,
        jax.numpy.asarray([prompt]),
        config.max_new_tokens,
        vocab_size=vocab_size,
        key=jax.random.key(config.seed),
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        stop_token=config.stop_token,
    )
    tokens = [int(t) for t in tokens[0]]
    return bytes(tokens).decode(errors="replace") if byte_level else tokens


@hydra.main(config_path="../configs", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        tokens = generate(from_mapping(GenerateConfig, raw, "generate"))
    except MissingMandatoryValue:
        print(
            "error: give checkpoint=DIR, a causal_lm run folder or a folder written by "
            "ssm.models.save_lm",
            file=sys.stderr,
        )
        sys.exit(1)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(tokens if isinstance(tokens, str) else " ".join(map(str, tokens)), flush=True)


if __name__ == "__main__":
    main()
