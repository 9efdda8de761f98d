"""The SGR step's compiled memory stays within a stated factor of the plain local step's, on the compiler the tests run: ResNet-20 at 16x16, batch 32, K = 4, the benchmark's own variants
(``experiments.bench.local_memory.measure``). Measured when this test was written (XLA:CPU, jax 0.10.2):
BP 21.6 MiB, plain local 10.8 MiB, local + SGR (jvp, checkpointed second pass) 14.3 MiB = 1.33x plain. A change
that keeps more of a module alive during the SGR pass shows here as a factor above the bound."""

import pytest

from experiments.bench.local_memory import Config, measure
from local_learning.reconcile import ReconcileConfig

pytestmark = pytest.mark.unsharded  # one device, as the benchmark measures

SGR_OVER_PLAIN = 1.45
"""The bound: 1.33 measured, plus room for compiler scheduling noise."""


def test_sgr_step_memory_within_a_factor_of_the_plain_local_step():
    cfg = Config(arch="resnet20", image_size=16, batch_size=32, iters=0, host_loop=False)
    plain = measure(cfg, "local", 4, ReconcileConfig(weight=0.0), "local")[0]["peak_bytes"]
    sgr = measure(cfg, "sgr", 4, ReconcileConfig(weight=1.0, remat=True), "local")[0]["peak_bytes"]
    assert sgr <= SGR_OVER_PLAIN * plain, f"SGR step {sgr / 2**20:.1f} MiB = {sgr / plain:.2f}x plain local"
