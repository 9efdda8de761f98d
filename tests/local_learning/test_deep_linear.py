"""The deep-linear analytic task: greedy local learning plateaus at the tail bound, BP does not, and neither SGR
placement can touch what module 1 erases (input_side leaves module 1 exactly alone; output_side's gradient on
module 1's body lies in the span its narrow head reads)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from local_learning import ConfigError
from local_learning import deep_linear as dl

SMALL = dl.DeepLinearConfig(dim=4, head_rank=1, num_modules=2, singular_values=(2.0, 1.5, 1.0, 0.5),
                            weight_decay=0.05, learning_rate=0.05, steps=3000, log_every=500, batch_size=32)


def test_greedy_plateaus_at_the_tail_bound_and_bp_goes_below_it():
    greedy = dl.train(SMALL)
    bp = dl.train(dataclasses.replace(SMALL, method="bp"))
    tail = SMALL.tail_error  # 1/2 (1.5^2 + 1 + 0.5^2)
    assert tail == pytest.approx(1.75)
    final = greedy["errors"][-1, -1]
    assert tail <= final < 1.02 * tail
    # The mechanism: the map x -> h_1 has collapsed to the head's rank.
    s = greedy["body_singular_values"][-1]
    assert s[0] > 0.5 and np.all(s[1:] < 1e-3)
    assert bp["errors"][-1, -1] < 0.05 * tail
    # Full-width heads remove the bound.
    wide = dl.train(dataclasses.replace(SMALL, head_rank=4))
    assert wide["errors"][-1, -1] < 0.05 * tail


def test_input_side_sgr_leaves_module_one_exactly_on_its_greedy_trajectory():
    greedy = dl.train(SMALL)
    sgr = dl.train(dataclasses.replace(SMALL, sgr_weight=0.1))
    np.testing.assert_array_equal(sgr["errors"][:, 0], greedy["errors"][:, 0])
    np.testing.assert_array_equal(sgr["body_singular_values"], greedy["body_singular_values"])
    assert not np.array_equal(sgr["errors"][:, 1], greedy["errors"][:, 1])  # the term does act on module 2


def test_output_side_term_moves_module_one_only_inside_its_heads_row_space():
    cfg = dataclasses.replace(SMALL, sgr_weight=1.0, placement="output_side")
    params = dl.init_params(cfg)
    x = jax.random.normal(jax.random.key(5), (16, cfg.dim))
    y = x @ dl.target_map(cfg).T
    with_term = dl.local_gradients(cfg, params, x, y)
    without = dl.local_gradients(dataclasses.replace(cfg, sgr_weight=0.0), params, x, y)
    term_w = with_term[0]["W"][0] - without[0]["W"][0]
    q = params[0]["Q"]
    outside = jnp.eye(cfg.dim) - q.T @ jnp.linalg.solve(q @ q.T, q)  # projector off the row space of Q_1
    assert float(jnp.linalg.norm(term_w)) > 1e-3
    np.testing.assert_allclose(outside @ term_w, 0.0, atol=1e-5 * float(jnp.linalg.norm(term_w)))
    # And the local loss's own gradient on W_1 has the same span.
    np.testing.assert_allclose(outside @ without[0]["W"][0], 0.0,
                               atol=1e-5 * float(jnp.linalg.norm(without[0]["W"][0])))


def test_bp_gradient_matches_the_gradient_of_the_composed_map():
    cfg = dataclasses.replace(SMALL, method="bp", layers_per_module=2)
    params = dl.init_params(cfg)
    x = jax.random.normal(jax.random.key(1), (8, cfg.dim))
    y = x @ dl.target_map(cfg).T

    def reference(ws):
        t = params[-1]["P"] @ params[-1]["Q"] @ ws[3] @ ws[2] @ ws[1] @ ws[0]
        return 0.5 * jnp.sum(jnp.square(x @ t.T - y)) / x.shape[0]

    ws = [params[0]["W"][0], params[0]["W"][1], params[1]["W"][0], params[1]["W"][1]]
    ref = jax.grad(reference)(ws)
    got = dl.bp_gradients(cfg, params, x, y)
    np.testing.assert_allclose(got[0]["W"][1], ref[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[1]["W"][0], ref[2], rtol=1e-4, atol=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match="singular_values"):
        dl.DeepLinearConfig(dim=3)
    with pytest.raises(ConfigError, match="multiple of log_every"):
        dataclasses.replace(SMALL, steps=1001)
    with pytest.raises(ConfigError, match="sgr_weight"):
        dataclasses.replace(SMALL, method="bp", sgr_weight=1.0)
