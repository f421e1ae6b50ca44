"""S4 specifics: its kernel is the dense SSM's, the step forms no N x N matrix, options checked.

Parallel == step, split-and-continue, padding, bf16, gradients and SSMParam are the conformance
suite's (tests/layers/test_conformance.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssm.layers import S4
from ssm.ops import reference


def make(**options):
    options = {"d_state": 8, "dt_min": 0.05, **options}
    return S4(4, **options, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "init, rank", [("legs", 1), ("legs", 2), ("legt", 2), ("lagt", 1), ("fout", 1)]
)
def test_kernel_equals_the_dense_discretized_ssm(init, rank):
    layer = make(init=init, rank=rank, channels=2)
    Lambda, P, B, C, log_dt = layer.parameters()
    dense = reference.dplr_kernel(Lambda, P, B, C, log_dt, 20)
    # complex64; FouT's and LagT's Re Λ = -1e-4 (marginally stable) cost a digit at the DC term
    np.testing.assert_allclose(layer.kernel(20), dense, atol=1e-4 * np.abs(dense).max())


def test_the_free_response_of_a_state_is_the_dense_ssm_started_there():
    layer = make(rank=2)
    Lambda, P, B, C, log_dt = layer.parameters()
    state = jax.random.normal(jax.random.key(1), (2, 4, 4)) * (1 + 1j)
    x = jnp.zeros((2, 9, 4))
    # Zero input: y_t = C Ā^(t+1) h0, i.e. the step recurrence from h0 with u = 0.
    y_steps, s = [], state
    for t in range(9):
        y_t, s = layer.step(x[:, t], s)
        y_steps.append(y_t)
    expected = jnp.stack(y_steps, 1)
    np.testing.assert_allclose(layer(x, state=state), expected, atol=1e-5 * jnp.abs(expected).max())
    assert not np.allclose(jnp.stack(y_steps, 1), 0)


def test_step_never_forms_an_n_by_n_matrix():
    layer = make(d_state=16)
    state = layer.initial_state(2)
    jaxpr = str(jax.make_jaxpr(lambda x, s: layer.step(x, s))(jnp.ones((2, 4)), state))
    assert "16,16" not in jaxpr.replace(" ", "")


def test_real_exp_keeps_re_lambda_negative_and_none_is_the_raw_value():
    stable, raw = make(real="exp"), make(real="none")
    np.testing.assert_allclose(stable.parameters()[0], raw.parameters()[0], rtol=1e-6)
    stable.A_real.value = stable.A_real.value + 5.0  # any value: Re Λ = -exp(.) < 0
    raw.A_real.value = raw.A_real.value + 5.0
    assert np.all(stable.parameters()[0].real < 0)
    assert np.all(raw.parameters()[0].real > 0)


def test_rank_is_at_least_the_measures():
    assert make(init="legs").rank == 1
    assert make(init="legt", rank=1).rank == 2
    assert make(init="legs", rank=3).P.shape[0] == 3


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(d_state=7), "S4 d_state=7 is not valid; valid: an integer >= 2 divisible by 2"),
        (dict(rank=0), "S4 rank=0 is not valid; valid: an integer >= 1"),
        (dict(dt_min=0.5, dt_max=0.1), "S4 needs dt_min <= dt_max, got dt_min=0.5, dt_max=0.1"),
        (dict(real="softplus"), "S4 real='softplus' is not valid; valid: 'exp', 'none'"),
        (dict(impl="fast"), "unknown S4 impl 'fast'; valid: auto, chunked, reference"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(**options)
