import jax
import jax.numpy as jnp
import numpy as np

from runtime import make_mesh
from runtime.metrics import HostAccumulator, Metric, merge, to_host


def test_masked_metric_is_the_exact_mean_across_shards_and_windows():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((8, 5)).astype(np.float32)
    mask = rng.random((8, 5)) < 0.4
    mesh = make_mesh({"data": 8})
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    v, m = jax.device_put(values, sharding), jax.device_put(mask, sharding)
    metric = jax.jit(Metric.from_values)(v, m)
    np.testing.assert_allclose(metric.compute(), values[mask].mean(), rtol=1e-5, atol=1e-6)
    # Rows of unequal valid counts merged in any grouping still give the global mean (a mean of means would not).
    parts = [Metric.from_values(values[i], mask[i]) for i in range(8)]
    acc = HostAccumulator()
    for i in range(0, 8, 3):
        window = parts[i]
        for p in parts[i + 1 : i + 3]:
            window = window.merge(p)
        acc.add({"x": window})
    np.testing.assert_allclose(acc.means()["x"], values[mask].mean(), rtol=1e-5, atol=1e-6)
    assert acc.means()["x"] != np.mean([p.compute() for p in parts if p.count > 0])


def test_merge_and_to_host():
    a = {"loss": Metric.from_mean(2.0, 3), "acc": Metric.scalar(1.0)}
    b = {"loss": Metric.from_mean(4.0, 1)}
    out = to_host(merge(a, b))
    assert out == {"loss": 2.5, "acc": 1.0}
    assert to_host({"e": Metric(total=jnp.zeros(()), count=jnp.zeros(())), "f": Metric.scalar(2.0)}) == {"f": 2.0}


def test_run_directory_json_is_standard():
    """summary.json, metrics.jsonl and results files go through standard_json: no NaN or Infinity tokens."""
    from experiments.run_dir import standard_json

    text = standard_json({"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": -float("inf")}})
    assert text == '{"a": null, "b": [1.5, null], "c": {"d": null}}'
