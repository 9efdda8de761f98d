"""Model sizes against independent counts, split-point rules and errors, the balanced split against brute force."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from local_learning import ConfigError, network
from local_learning.heads import HeadConfig
from local_learning.memory import residual_bytes
from local_learning.models import ResNetConfig, ViTConfig, build_blocks
from local_learning.partition import PartitionConfig, balanced_split, check_split_points, equal_split

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose


def count_params(cfg):
    blocks, classifier = nnx.eval_shape(lambda: build_blocks(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state((blocks, classifier), nnx.Param)))


def cifar_resnet_count(n, classes=10):
    """Independent count: 3x3 convs without bias, BN (scale, bias), 1x1 projection shortcuts, linear classifier."""
    total = 3 * 3 * 3 * 16 + 2 * 16
    ch = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * ch * width + 2 * width + 9 * width * width + 2 * width
            if ch != width:
                total += ch * width + 2 * width
            ch = width
    return total + 64 * classes + classes


def test_parameter_counts():
    assert count_params(ResNetConfig.resnet32()) == cifar_resnet_count(5)
    assert count_params(ResNetConfig.resnet110(100)) == cifar_resnet_count(18, 100)
    # torchvision.models.resnet50 / resnet101 and timm deit_small_patch16_224.
    assert count_params(ResNetConfig.resnet50()) == 25_557_032
    assert count_params(ResNetConfig.resnet101()) == 44_549_160
    assert count_params(ViTConfig.deit_s()) == 22_050_664


@pytest.mark.parametrize("cfg,k", [(ResNetConfig.resnet32(), 4), (ResNetConfig.resnet50(), 2), (ViTConfig.deit_s(), 4)])
def test_every_head_of_a_split_network_gives_logits(cfg, k):
    small = dict(image_size=32) if not isinstance(cfg, ViTConfig) else dict(image_size=32, patch_size=16)
    cfg = type(cfg)(**{**cfg.__dict__, **small})
    plan = network.plan_partition(cfg, PartitionConfig(num_modules=k))
    netdef, variables = network.abstract_network(cfg, plan)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: network.predict(netdef, v, x), variables, x)
    assert [tuple(l.shape) for l in logits] == [(2, cfg.num_classes)] * k


def test_equal_split_points():
    assert equal_split(16, 2) == (8,)
    assert equal_split(16, 4) == (4, 8, 12)
    assert equal_split(5, 5) == (1, 2, 3, 4)
    assert equal_split(7, 1) == ()


@pytest.mark.parametrize(
    "points,blocks,k,message",
    [((0, 3), 8, 3, "out of range"), ((3, 8), 8, 3, "out of range"), ((4, 2), 8, 3, "not strictly increasing"),
     ((2,), 8, 3, "expected 2"), ((1, 2, 3), 3, 4, "larger than the number of blocks")],
)
def test_bad_split_points_are_named(points, blocks, k, message):
    with pytest.raises(ConfigError, match=message):
        check_split_points(points, blocks, k)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="num_modules"):
        PartitionConfig(num_modules=0)
    with pytest.raises(ConfigError, match="split_points"):
        PartitionConfig(num_modules=3, split="explicit", split_points=(2,))
    with pytest.raises(ConfigError, match="larger than the number of blocks"):
        network.plan_partition(ResNetConfig.tiny(), PartitionConfig(num_modules=5))
    with pytest.raises(ConfigError, match="depth"):
        ResNetConfig.cifar(33)
    with pytest.raises(ConfigError, match="patch_size"):
        ViTConfig(image_size=30, patch_size=16)


def test_balanced_split_is_optimal_by_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, k = int(rng.integers(3, 9)), int(rng.integers(1, 4))
        k = min(k, n)
        c, e = rng.uniform(0, 10, n), rng.uniform(0, 3, n)

        def worst(points):
            edges = [0, *points, n]
            return max(c[a:b].sum() + e[b - 1] for a, b in zip(edges[:-1], edges[1:]))

        best = min(worst(p) for p in itertools.combinations(range(1, n), k - 1))
        np.testing.assert_allclose(worst(balanced_split(c, k, e)), best)


def test_balanced_memory_moves_splits_toward_the_large_early_activations():
    cfg = ResNetConfig.resnet32()
    equal = network.plan_partition(cfg, PartitionConfig(num_modules=2))
    balanced = network.plan_partition(cfg, PartitionConfig(num_modules=2, split="balanced_memory"))
    assert balanced.split_points[0] < equal.split_points[0]
    costs = np.asarray(balanced.block_costs)
    # Stage 1 blocks (32x32x16) keep more than stage 3 blocks (8x8x64).
    assert costs[1] > 2 * costs[-1]


def test_module_residuals_shrink_with_k():
    """Module-local backward passes keep about 1/K of global BP's residuals (plus a head)."""
    from local_learning.train_step import global_loss

    cfg = ResNetConfig.resnet32()
    x = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((8,), jnp.int32)
    netdef1, v1 = network.abstract_network(cfg, network.plan_partition(cfg, PartitionConfig(num_modules=1)))
    glob = residual_bytes(lambda p, s, x, y: global_loss(netdef1, p, s, {"image": x, "label": y})[0],
                          v1["params"], v1["stats"], x, y)
    for k in (2, 4):
        plan = network.plan_partition(cfg, PartitionConfig(num_modules=k, split="balanced_memory"), HeadConfig())
        netdef, v = network.abstract_network(cfg, plan)
        h, worst = x, 0
        for m, gdef in enumerate(netdef.graphdefs):
            def features(p, s, h, gdef=gdef):
                return network.module_features(gdef, p, s, h, train=True)[0]

            out = jax.eval_shape(features, v["params"][m], v["stats"][m], h)

            def loss(p, s, h, y, gdef=gdef, out=out):
                return network.local_loss(gdef, p, s, h, jnp.zeros(out.shape, out.dtype), y)[0]

            worst = max(worst, residual_bytes(loss, v["params"][m], v["stats"][m], h, y))
            h = out
        assert worst <= (1.0 / k + 0.08) * glob, (k, worst / glob)
