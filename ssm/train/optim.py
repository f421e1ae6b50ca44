"""Optimizer with the SSM parameter policy: parameters are labelled by type, never by name."""

import jax
import optax
from flax import nnx

from ssm.params import SSMParam
from ssm.train.config import OptimizerConfig, SchedulerConfig


def param_labels(params: nnx.State) -> dict:
    """'ssm' for every SSMParam, 'regular' for every other parameter, as a pure dict."""
    labels = jax.tree.map(
        lambda v: "ssm" if isinstance(v, SSMParam) else "regular",
        params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.to_pure_dict(labels)


def make_schedule(peak: float, config: SchedulerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``peak`` over ``warmup_steps``, then constant, cosine or linear decay."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    end = peak * config.end_ratio
    if config.name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, 1), end)
    if config.name == "linear":
        decay = optax.linear_schedule(peak, end, max(total_steps - warmup, 1))
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(
    config: OptimizerConfig, schedule: SchedulerConfig, total_steps: int, labels: dict
) -> optax.GradientTransformation:
    """AdamW(lr, weight_decay) on 'regular' parameters, Adam(ssm_lr) without decay on 'ssm' ones."""
    groups = {
        "ssm": optax.adam(
            make_schedule(config.ssm_lr, schedule, total_steps), config.b1, config.b2
        ),
        "regular": optax.adamw(
            make_schedule(config.lr, schedule, total_steps),
            config.b1,
            config.b2,
            weight_decay=config.weight_decay,
        ),
    }
    tx = optax.multi_transform(groups, labels)
    if config.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
    return tx
