"""Deep linear modules with narrow local heads: an analytic case where greedy local learning provably loses.

Data: x ~ N(0, I_d), y = M x with M = U diag(s) V^T (s_1 >= ... >= s_d >= 0; U, V random orthogonal).
Network: K modules; module k is L linear layers, h_k = W_{k,L} ... W_{k,1} h_{k-1} = B_k h_{k-1}; its head is
a_k(h) = P_k Q_k h with Q_k of shape r_k x d and P_k of shape d x r_k, r_k = r (narrow) for k < K and r_K = d
(the last head is the network's own, full width). Module k's loss on a batch is sum-reduced, as in
``local_learning.network``:

    L_k = sum_i 1/2 ||P_k Q_k h_{k,i} - y_i||^2,

and every parameter carries weight decay wd (SGD on g + wd * theta). The expected per-example loss of an
end-to-end linear map T is E 1/2 ||T x - M x||^2 = 1/2 ||T - M||_F^2, so errors are exact, not sampled.

Greedy plateau. Module 1's body gets the local gradient sum_i (P_1 Q_1)^T (P_1 Q_1 h_{1,i} - y_i) x_i^T, whose
columns lie in the row space of Q_1 (dimension <= r). The part of B_1 outside that space sees only weight decay
and shrinks by (1 - eta wd) per step, so the map x -> h_1 tends to rank <= r, every later module sees a rank-r
input, and by Eckart-Young the end-to-end error is at least

    E_tail = 1/2 sum_{i > r} s_i^2.

Global BP trains every layer on L_K through the full-width last head and reaches a floor set by wd alone.

SGR (``local_learning.reconcile``, sq_l2 on per-example gradients of the sum-reduced losses) cannot lift the
plateau in either placement:
* ``input_side``: module k >= 2 minimises L_k / B + lambda D(g_in^(k), sg[g_out^(k-1)]); the term moves only
  module k, so module 1 follows the greedy trajectory exactly and the bound holds for every lambda.
* ``output_side``: module k-1 adds D(g_out^(k-1), sg[g_in^(k)]) with g_out^(k-1) = (P Q)^T (P Q h - y); its
  derivative in h is 2 (P Q)^T (P Q) (g_out - t), again in the row space of Q_{k-1}, so the term's gradient on
  B_{k-1} has the same span as the local loss's and the erased part still decays.
SGR reconciles gradients at a boundary; it cannot recreate directions that an upstream module's narrow head let
weight decay erase. What restores them is a head that reads them (r >= rank M), or no weight decay on the early
modules (the unread part then keeps its initial, invertible value and the last module can undo it).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from local_learning import reconcile
from local_learning.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeepLinearConfig:
    dim: int = 8
    head_rank: int = 2
    """r: the width of every local head but the last (which is ``dim`` wide)."""
    num_modules: int = 4
    layers_per_module: int = 1
    singular_values: tuple[float, ...] = (2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25)
    """s of the target map M (length ``dim``)."""
    method: Literal["bp", "local"] = "local"
    sgr_weight: float = 0.0
    placement: Literal["input_side", "output_side"] = "input_side"
    weight_decay: float = 0.02
    early_weight_decay: bool = True
    """False: no weight decay on modules 1..K-1 (their bodies and heads), to show what erases the directions."""
    learning_rate: float = 0.05
    steps: int = 10_000
    batch_size: int = 64
    log_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.dim < 2 or not 1 <= self.head_rank <= self.dim:
            raise ConfigError(f"DeepLinearConfig: dim={self.dim} >= 2 and 1 <= head_rank={self.head_rank} <= dim needed")
        if self.num_modules < 1 or self.layers_per_module < 1:
            raise ConfigError("DeepLinearConfig.num_modules and layers_per_module must be at least 1")
        if len(self.singular_values) != self.dim or any(s < 0 for s in self.singular_values):
            raise ConfigError(f"DeepLinearConfig.singular_values: {self.dim} non-negative values needed, got "
                              f"{self.singular_values}")
        if self.method not in ("bp", "local"):
            raise ConfigError(f"DeepLinearConfig.method={self.method!r}: expected 'bp' or 'local'")
        if self.placement not in reconcile.PLACEMENTS:
            raise ConfigError(f"DeepLinearConfig.placement={self.placement!r}: expected one of {reconcile.PLACEMENTS}")
        if self.sgr_weight < 0 or (self.sgr_weight > 0 and self.method == "bp"):
            raise ConfigError("DeepLinearConfig.sgr_weight must be >= 0, and 0 for method='bp'")
        if not (self.learning_rate > 0 and self.weight_decay >= 0 and self.steps >= 1 and self.batch_size >= 1
                and self.log_every >= 1):
            raise ConfigError("DeepLinearConfig: learning_rate > 0, weight_decay >= 0, steps, batch_size and "
                              "log_every >= 1 needed")
        if self.steps % self.log_every:
            raise ConfigError(f"DeepLinearConfig.steps={self.steps} must be a multiple of log_every={self.log_every}")

    def head_ranks(self) -> list[int]:
        return [self.head_rank] * (self.num_modules - 1) + [self.dim]

    @property
    def tail_error(self) -> float:
        """E_tail = 1/2 sum_{i > r} s_i^2, the greedy plateau's lower bound."""
        s = np.sort(np.asarray(self.singular_values, np.float64))[::-1]
        return float(0.5 * np.sum(s[self.head_rank:] ** 2))

    @property
    def zero_map_error(self) -> float:
        """1/2 ||M||_F^2, the error of the zero map (to read errors as fractions)."""
        return float(0.5 * np.sum(np.square(self.singular_values)))


def target_map(cfg: DeepLinearConfig) -> jax.Array:
    """M = U diag(s) V^T with U, V random orthogonal (from the seed)."""
    ku, kv = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1))
    u = jnp.linalg.qr(jax.random.normal(ku, (cfg.dim, cfg.dim)))[0]
    v = jnp.linalg.qr(jax.random.normal(kv, (cfg.dim, cfg.dim)))[0]
    return u @ jnp.diag(jnp.asarray(cfg.singular_values, jnp.float32)) @ v.T


def init_params(cfg: DeepLinearConfig) -> list[dict]:
    """Per module {"W": [L, d, d] orthogonal layers, "P": [d, r_k], "Q": [r_k, d]}."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
    out = []
    for k, r in enumerate(cfg.head_ranks()):
        kw, kp, kq = jax.random.split(jax.random.fold_in(key, k), 3)
        w = jnp.stack([jnp.linalg.qr(jax.random.normal(jax.random.fold_in(kw, l), (cfg.dim, cfg.dim)))[0]
                       for l in range(cfg.layers_per_module)])
        out.append({"W": w,
                    "P": jax.random.normal(kp, (cfg.dim, r)) / np.sqrt(r),
                    "Q": jax.random.normal(kq, (r, cfg.dim)) / np.sqrt(cfg.dim)})
    return out


def body(w_LxDxD, h_BxD):
    for layer in w_LxDxD:
        h_BxD = h_BxD @ layer.T
    return h_BxD


def head_loss(p, h_BxD, y_BxD):
    """sum_i 1/2 ||P Q h_i - y_i||^2."""
    return 0.5 * jnp.sum(jnp.square(h_BxD @ p["Q"].T @ p["P"].T - y_BxD))


def module_loss(p, x_BxD, y_BxD):
    """L_k as a function of the module's parameters and its input."""
    return head_loss(p, body(p["W"], x_BxD), y_BxD)


def body_map(p) -> jax.Array:
    """B_k = W_L ... W_1 (``body`` acts on rows: h B_k^T)."""
    return body(p["W"], jnp.eye(p["W"].shape[-1])).T


def module_maps(params: list[dict]) -> list[jax.Array]:
    """[T_1, ..., T_K], T_k = P_k Q_k B_k ... B_1: the end-to-end map read by head k."""
    prefix, out = None, []
    for p in params:
        b = body_map(p)
        prefix = b if prefix is None else b @ prefix
        out.append(p["P"] @ p["Q"] @ prefix)
    return out


def errors(params: list[dict], m: jax.Array) -> jax.Array:
    """[K] expected per-example loss 1/2 ||T_k - M||_F^2 of every head."""
    return jnp.stack([0.5 * jnp.sum(jnp.square(t - m)) for t in module_maps(params)])


def _decay(cfg: DeepLinearConfig, k: int) -> float:
    return cfg.weight_decay if (cfg.early_weight_decay or k == cfg.num_modules - 1) else 0.0


def local_gradients(cfg: DeepLinearConfig, params: list[dict], x_BxD, y_BxD) -> list[dict]:
    """Every module's gradient of its local objective (loss / B, the SGR term, weight decay), inputs isolated."""
    distance = reconcile.squared_l2
    b = x_BxD.shape[0]
    h, target, grads, inputs, g_ins = x_BxD, None, [], [], []
    for k, p in enumerate(params):
        h_in = jax.lax.stop_gradient(h)
        g, g_in = jax.grad(module_loss, argnums=(0, 1))(p, h_in, y_BxD)  # one backward pass gives both
        g = jax.tree.map(lambda a: a / b, g)
        if cfg.sgr_weight > 0 and cfg.placement == "input_side" and target is not None:
            _, term = reconcile.term_direct(lambda q, x: module_loss(q, x, y_BxD), p, h_in, target, distance)
            g = jax.tree.map(lambda a, t: a + cfg.sgr_weight * t, g, term)
        h = body(p["W"], h_in)
        g_ins.append(g_in)
        target = jax.lax.stop_gradient(jax.grad(head_loss, argnums=1)(p, h, y_BxD))
        grads.append(g)
        inputs.append(h_in)
    if cfg.sgr_weight > 0 and cfg.placement == "output_side":
        for k in range(len(params) - 1):
            def scalar(q, z, k=k):
                return head_loss(q, body(q["W"], inputs[k]) + z, y_BxD)

            t = jax.lax.stop_gradient(g_ins[k + 1])
            _, term = reconcile.term_direct(scalar, params[k], jnp.zeros_like(inputs[k]), t, distance)
            grads[k] = jax.tree.map(lambda a, tt: a + cfg.sgr_weight * tt, grads[k], term)
    return grads


def bp_gradients(cfg: DeepLinearConfig, params: list[dict], x_BxD, y_BxD) -> list[dict]:
    """Gradient of L_K / B through every body; the narrow heads are unused by BP and get none."""

    def loss(bodies, last_head):
        h = x_BxD
        for w in bodies:
            h = body(w, h)
        return head_loss(last_head, h, y_BxD) / x_BxD.shape[0]

    bodies = [p["W"] for p in params]
    last = {"P": params[-1]["P"], "Q": params[-1]["Q"]}
    g_bodies, g_last = jax.grad(loss, argnums=(0, 1))(bodies, last)
    out = [{"W": gw, "P": jnp.zeros_like(p["P"]), "Q": jnp.zeros_like(p["Q"])} for gw, p in zip(g_bodies, params)]
    out[-1] = {"W": g_bodies[-1], **g_last}
    return out


def sgd_step(cfg: DeepLinearConfig, params: list[dict], key, m) -> list[dict]:
    x = jax.random.normal(key, (cfg.batch_size, cfg.dim))
    y = x @ m.T
    grads = (bp_gradients if cfg.method == "bp" else local_gradients)(cfg, params, x, y)
    return [jax.tree.map(lambda p, g: p - cfg.learning_rate * (g + _decay(cfg, k) * p), pk, gk)
            for k, (pk, gk) in enumerate(zip(params, grads))]


def train(cfg: DeepLinearConfig) -> dict[str, np.ndarray]:
    """Runs ``cfg.steps`` SGD steps on fresh Gaussian batches. Returns ``steps`` [n], ``errors`` [n, K] (every
    head's exact expected loss, logged every ``log_every`` steps and at the end) and ``body_singular_values``
    [n, d] (of the map x -> h_1, whose decay is the plateau's mechanism)."""
    m = target_map(cfg)
    params = init_params(cfg)
    data_key = jax.random.fold_in(jax.random.key(cfg.seed), 3)
    n_log = -(-cfg.steps // cfg.log_every)

    @jax.jit
    def chunk(params, c):
        def one(params, i):
            return sgd_step(cfg, params, jax.random.fold_in(data_key, i), m), None

        idx = c * cfg.log_every + jnp.arange(cfg.log_every)
        params, _ = jax.lax.scan(one, params, idx)
        return params, errors(params, m), jnp.linalg.svd(body_map(params[0]), compute_uv=False)

    steps, errs, svals = [], [], []
    for c in range(n_log):
        params, e, s = chunk(params, c)
        steps.append((c + 1) * cfg.log_every)
        errs.append(np.asarray(e))
        svals.append(np.asarray(s))
    return {"steps": np.asarray(steps), "errors": np.stack(errs), "body_singular_values": np.stack(svals),
            "initial_errors": np.asarray(errors(init_params(cfg), m))}
