"""M-step: parameter groups, frozen groups, the memory-light "-F" corruption model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax import mstep
from vibe_jax.train import TrainState
from vibe_jax.models import VIBEHead, VIBEModel, l2_normalize


def _naive_log_p_corrupt(params, v, y, nu):
  """The reference's formula: h = mu^ + v, T[b, y, l] = nu eta^_y . h_l(x_b)."""
  mu_n, eta_n = l2_normalize(params["mu"]), l2_normalize(params["eta"])
  h = mu_n[None, :, :] + v[:, None, :]  # (B, K, D)
  t = nu * jnp.einsum("id,bjd->bij", eta_n, h)  # (B, K_y, K_l)
  t = t - jax.nn.logsumexp(t, axis=1, keepdims=True)
  return jnp.take_along_axis(t, y[:, None, None], axis=1)[:, 0, :]


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_conditioned_corruption_model_equals_the_reference_formula(scale):
  rng = np.random.default_rng(0)
  k, d, b = 7, 16, 11
  head = VIBEHead(num_classes=k, dim=d, nu=20.0, conditioned=True)
  params = {"mu": jnp.asarray(rng.normal(size=(k, d)), jnp.float32),
            "eta": jnp.asarray(rng.normal(size=(k, d)), jnp.float32),
            "rho": jnp.zeros((k,))}
  v = jnp.asarray(scale * rng.normal(size=(b, d)), jnp.float32)
  y = jnp.asarray(rng.integers(0, k, b), jnp.int32)
  got = head.apply({"params": params}, v, y, method="log_p_corrupt")
  want = _naive_log_p_corrupt(params, v, y, 20.0)
  np.testing.assert_allclose(got, want, atol=2e-5 * max(1.0, scale))
  grad = lambda fn: jax.grad(lambda p: jnp.sum(fn(p) ** 2))(params)
  g_got = grad(lambda p: head.apply({"params": p}, v, y, method="log_p_corrupt"))
  g_want = grad(lambda p: _naive_log_p_corrupt(p, v, y, 20.0))
  for name in ("mu", "eta"):
    # At scale 30 the entries reach ~6e6, so float32 cancellation leaves an error of
    # ~1e-7 of the largest on every entry (seen: 0.5 on an entry of -415); the
    # tolerance scales with the array, as the value check above scales with `scale`.
    atol = max(1e-3, 1e-6 * float(np.max(np.abs(g_want[name]))))
    np.testing.assert_allclose(g_got[name], g_want[name], rtol=1e-3, atol=atol)


def test_param_groups_label_backbone_and_head():
  params = {"backbone": {"conv": {"kernel": 1, "bias": 2}},
            "head": {"mu": 3, "eta": 4, "rho": 5}}
  assert mstep.param_groups(params) == {
      "backbone": {"conv": {"kernel": "backbone", "bias": "backbone"}},
      "head": {"mu": "mu", "eta": "eta", "rho": "prior"}}


def test_frozen_groups_do_not_move():
  rng = np.random.default_rng(0)
  model = VIBEModel(VIBEHead(num_classes=3, dim=4, conditioned=True))
  params = {"head": {"mu": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                     "eta": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                     "rho": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}}
  before = jax.tree_util.tree_map(np.asarray, params)
  tx = mstep.make_optimizer({"backbone": 0.1, "mu": 0.1, "eta": 0.1, "prior": 0.1},
                            frozen=("eta", "prior"))
  state = TrainState.create_for(
      params=params, tx=tx, extra={"pseudo_labels": jnp.asarray([0, 1, 2, 0], jnp.int32)})
  step = jax.jit(mstep.make_vibe_step(model))
  batch = {"x": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
           "y": jnp.asarray([0, 0, 2, 1]), "index": jnp.arange(4)}
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  head = state.params["head"]
  np.testing.assert_array_equal(head["eta"], before["head"]["eta"])
  np.testing.assert_array_equal(head["rho"], before["head"]["rho"])
  assert not np.allclose(head["mu"], before["head"]["mu"])
  assert losses[-1] < losses[0]


def test_unknown_or_missing_groups_are_named():
  with pytest.raises(ValueError, match="frozen groups"):
    mstep.make_optimizer({"mu": 1.0}, frozen=("mus",))
  with pytest.raises(ValueError, match="'eta'"):
    mstep.make_optimizer({"backbone": 1.0, "mu": 1.0, "prior": 1.0})
