"""Sample from a saved language model.

``python -m experiments.generate checkpoint=DIR prompt="1 2 3" max_new_tokens=20 temperature=0``
prints the prompt and the generated token ids on one line, separated by spaces.
"""

import dataclasses
import logging
import sys

import hydra
import jax
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ssm.config import ConfigError, from_mapping
from ssm.models import load_lm

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


def generate(config: GenerateConfig) -> list[int]:
    """Load the checkpoint and return the prompt followed by the generated tokens."""
    model = load_lm(config.checkpoint)
    prompt = prompt_tokens(config.prompt)
    if not prompt or not all(0 <= t < model.vocab_size for t in prompt):
        raise ConfigError(f"prompt={prompt} must be non-empty token ids in [0, {model.vocab_size})")
    tokens = model.generate(
        jax.numpy.asarray([prompt]),
        config.max_new_tokens,
        key=jax.random.key(config.seed),
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        stop_token=config.stop_token,
    )
    return [int(t) for t in tokens[0]]


@hydra.main(config_path="../configs", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        tokens = generate(from_mapping(GenerateConfig, raw, "generate"))
    except MissingMandatoryValue:
        print("error: give checkpoint=DIR, a folder written by ssm.models.save_lm", file=sys.stderr)
        sys.exit(1)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(" ".join(map(str, tokens)), flush=True)


if __name__ == "__main__":
    main()
