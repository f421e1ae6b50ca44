"""Orbax checkpoints of the train state: the latest (for exact resume) and the best."""

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Two orbax ``CheckpointManager``s under ``directory``: ``latest/`` and ``best/``.

    Orbax writes each checkpoint to a temporary folder and renames it when complete, so a crash
    during a save never corrupts an earlier checkpoint.
    """

    def __init__(
        self,
        directory: str | Path,
        best_metric: str = "validation/accuracy",
        best_mode: str = "max",
    ):
        directory = Path(directory).absolute()
        self.directory = directory
        self.best_metric, self.best_mode = best_metric, best_mode
        self.latest = ocp.CheckpointManager(
            directory / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=1)
        )
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode
            ),
        )

    def save_latest(self, step: int, state):
        if self.latest.latest_step() != step:
            self.latest.save(step, args=ocp.args.StandardSave(state))
            self.latest.wait_until_finished()

    def save_if_best(self, step: int, state, metrics: dict[str, float]) -> bool:
        """Save ``state`` as the best if ``metrics[best_metric]`` beats the kept one."""
        best_step = self.best.best_step()
        if best_step is not None:
            kept = self.best.metrics(best_step) or {}
            sign = 1.0 if self.best_mode == "max" else -1.0
            worst = float("-inf") if self.best_mode == "max" else float("inf")
            if sign * metrics[self.best_metric] <= sign * kept.get(self.best_metric, worst):
                return False
        self.best.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
        self.best.wait_until_finished()
        return True

    @staticmethod
    def _restore(manager, step, like):
        abstract = None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, like=None):
        """(step, state) of the latest checkpoint, or None if there is none.

        With ``like`` (a pytree of arrays) the state is restored into its structure and dtypes;
        without it, as orbax stored it (dict keys as strings).
        """
        step = self.latest.latest_step()
        return None if step is None else (step, self._restore(self.latest, step, like))

    def restore_best(self, like=None):
        step = self.best.best_step()
        return None if step is None else (step, self._restore(self.best, step, like))

    def close(self):
        self.latest.close()
        self.best.close()
