"""Orbax checkpoints of the train state: the last few (for exact resume) and the best."""

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

LEGACY_MISSING = "diverged_at"  # a train-state key that checkpoints of earlier versions lack


class CheckpointError(RuntimeError):
    """No checkpoint in a folder could be read."""


class NonFiniteState(FloatingPointError):
    """A state with a NaN or infinite parameter or optimizer leaf was about to be saved."""


def all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite: a () bool array (also in jit)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _inexact(x)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def non_finite_leaves(tree) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` that hold a NaN or an infinity."""
    return [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if _inexact(x) and not bool(jnp.all(jnp.isfinite(x)))
    ]


def _inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class Checkpoints:
    """Two orbax ``CheckpointManager``s under ``directory``: ``latest/`` and ``best/``.

    ``latest/`` keeps the last ``keep`` saves, so a damaged newest one falls back to the one
    before. Orbax writes each checkpoint to a temporary folder and renames it when complete, so
    a crash during a save never corrupts an earlier checkpoint; a state with a non-finite leaf is
    never saved (``NonFiniteState``).
    """

    def __init__(
        self,
        directory: str | Path,
        best_metric: str = "validation/accuracy",
        best_mode: str = "max",
        keep: int = 2,
    ):
        directory = Path(directory).absolute()
        self.directory = directory
        self.best_metric, self.best_mode = best_metric, best_mode
        self._latest_options = ocp.CheckpointManagerOptions(max_to_keep=keep)
        self.latest = self._open_latest()
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode
            ),
        )

    def _open_latest(self):
        return ocp.CheckpointManager(self.directory / "latest", options=self._latest_options)

    @staticmethod
    def _save(manager, step: int, state, **kwargs):
        if not bool(all_finite(state)):  # one reduction; the paths only for the message
            bad = non_finite_leaves(state)
            raise NonFiniteState(
                f"not saving step {step}: {len(bad)} leaves are not finite (first: {bad[0]})"
            )
        manager.save(step, args=ocp.args.StandardSave(state), **kwargs)
        manager.wait_until_finished()

    def save_latest(self, step: int, state):
        if self.latest.latest_step() != step:
            self._save(self.latest, step, state)

    def save_if_best(self, step: int, state, metrics: dict[str, float]) -> bool:
        """Save ``state`` as the best if ``metrics[best_metric]`` beats the kept one."""
        best_step = self.best.best_step()
        if best_step is not None:
            kept = self.best.metrics(best_step) or {}
            sign = 1.0 if self.best_mode == "max" else -1.0
            worst = float("-inf") if self.best_mode == "max" else float("inf")
            if sign * metrics[self.best_metric] <= sign * kept.get(self.best_metric, worst):
                return False
        self._save(self.best, step, state, metrics=metrics, force=True)
        return True

    @staticmethod
    def _restore(manager, step, like):
        abstract = None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except ValueError:
            if abstract is None or LEGACY_MISSING not in abstract:
                raise
        # A checkpoint from before the state carried its divergence flag: restore without it.
        older = {k: v for k, v in abstract.items() if k != LEGACY_MISSING}
        state = manager.restore(step, args=ocp.args.StandardRestore(older))
        return {**state, LEGACY_MISSING: like[LEGACY_MISSING]}

    def restore_latest(self, like=None):
        """(step, state) of the newest readable checkpoint, or None if there is none.

        A checkpoint that fails to restore (truncated or missing files) is skipped, with a
        one-line warning (logger ``ssm``) naming it and the error, for the one before. With
        ``like`` (a pytree of arrays) the state is restored into its structure and dtypes;
        without it, as orbax stored it (dict keys as strings).
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                return step, self._restore(self.latest, step, like)
            except Exception as error:  # noqa: BLE001 - any damage means: try the one before
                reason = " ".join(str(error).split())[:200] or type(error).__name__
                after = "no earlier checkpoint"
                if i + 1 < len(steps):
                    after = f"falling back to step {steps[i + 1]}"
                self.latest.close()  # a failed restore can leave the manager confused
                self.latest = self._open_latest()
                logging.getLogger("ssm").warning(
                    f"checkpoint step {step} in {self.latest.directory} is damaged "
                    f"({type(error).__name__}: {reason}); {after}"
                )
        if steps:
            raise CheckpointError(
                f"no readable checkpoint in {self.latest.directory} (tried steps "
                f"{', '.join(map(str, steps))}); start a new run or set trainer.overwrite=true"
            )
        return None

    def restore_best(self, like=None):
        step = self.best.best_step()
        return None if step is None else (step, self._restore(self.best, step, like))

    def close(self):
        self.latest.close()
        self.best.close()
