import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssm.models import SequenceModel
from ssm.train import OptimizerConfig, SchedulerConfig, make_optimizer, param_labels
from ssm.train.optim import make_schedule


def small_model():
    return SequenceModel(
        num_classes=3,
        d_input=2,
        d_model=8,
        n_layers=2,
        layer_options={"d_state": 4},
        rngs=nnx.Rngs(0),
    )


def test_param_labels_follow_the_parameter_type_not_the_name():
    labels = param_labels(nnx.state(small_model(), nnx.Param))
    layer = labels["blocks"][0]["layer"]
    assert {layer[k] for k in ("log_dt", "log_A_real", "A_imag", "B", "C")} == {"ssm"}
    assert layer["D"] == "regular"
    assert labels["encoder"]["kernel"] == "regular" and labels["head"]["bias"] == "regular"


def test_ssm_parameters_get_ssm_lr_and_no_weight_decay_others_get_adamw():
    config = OptimizerConfig(lr=1e-2, ssm_lr=1e-3, weight_decay=0.5)
    params_state = nnx.state(small_model(), nnx.Param)
    labels = param_labels(params_state)
    params = nnx.to_pure_dict(params_state)
    tx = make_optimizer(config, SchedulerConfig(name="constant"), 100, labels)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # First Adam step moves every coordinate by lr * m/sqrt(v) = lr (gradients of 1); AdamW adds
    # lr * weight_decay * p. SSM parameters must show exactly -ssm_lr and no decay term.
    for label, update, p in zip(
        jax.tree.leaves(labels), jax.tree.leaves(updates), jax.tree.leaves(params), strict=True
    ):
        if label == "ssm":
            np.testing.assert_allclose(update, -1e-3, rtol=1e-4)
        else:
            np.testing.assert_allclose(update, -1e-2 * (1.0 + 0.5 * p), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
def test_schedules_warm_up_linearly_then_follow_their_shape(name):
    schedule = make_schedule(1.0, SchedulerConfig(name=name, warmup_steps=10, end_ratio=0.1), 110)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
    end = float(schedule(110))
    assert end == pytest.approx(1.0 if name == "constant" else 0.1, abs=1e-5)
    if name != "constant":
        assert float(schedule(60)) < 1.0


def test_grad_clip_equals_adamw_on_the_rescaled_gradient():
    params = {"w": jnp.arange(4.0)}
    labels = {"w": "regular"}
    grads = [{"w": jnp.array([3e3, -4e3, 0.0, 1.0])}, {"w": jnp.array([1.0, 2.0, -2.0, 0.5])}]

    def run(grad_clip, grads):
        config = OptimizerConfig(lr=0.1, weight_decay=0.1, grad_clip=grad_clip)
        tx = make_optimizer(config, SchedulerConfig(name="constant"), 10, labels)
        state, out = tx.init(params), []
        for g in grads:
            update, state = tx.update(g, state, params)
            out.append(update["w"])
        return out

    rescaled = [
        jax.tree.map(lambda x, g=g: x / max(1.0, float(optax.global_norm(g))), g) for g in grads
    ]
    for clipped, manual in zip(run(1.0, grads), run(None, rescaled), strict=True):
        np.testing.assert_allclose(clipped, manual, rtol=1e-5)
    assert not np.allclose(run(1.0, grads)[1], run(None, grads)[1])
