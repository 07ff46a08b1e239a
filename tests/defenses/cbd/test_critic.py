"""CBD's critic: its estimate rises on dependent pairs and stays near zero on
independent ones; spectral normalisation holds each layer's norm at 1."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vibe_jax.defenses.cbd import Critic, mutual_information, spectral_normalize


def _train_critic(dependent: bool, steps=300, d=4, batch=256):
  critic = Critic(hidden=2 * d, dropout=0.0)
  key = jax.random.PRNGKey(0)
  zeros = jnp.zeros((1, d))
  params = spectral_normalize(critic.init(key, zeros, zeros)["params"])
  tx = optax.adam(0.05)
  opt = tx.init(params)

  def pairs(k):
    kr, kz = jax.random.split(k)
    r = jax.random.normal(kr, (batch, d))
    z = r + 0.1 * jax.random.normal(kz, (batch, d)) if dependent else jax.random.normal(kz, (batch, d))
    return r, z

  @jax.jit
  def step(params, opt, k):
    r, z = pairs(k)
    grads = jax.grad(lambda p: -mutual_information(critic, p, r, z, k, True))(params)
    updates, opt = tx.update(grads, opt, params)
    return spectral_normalize(optax.apply_updates(params, updates)), opt

  for i in range(steps):
    params, opt = step(params, opt, jax.random.fold_in(key, i))
  estimates = [float(mutual_information(critic, params, *pairs(jax.random.PRNGKey(1000 + i)),
                                        jax.random.PRNGKey(i))) for i in range(10)]
  return float(np.mean(estimates)), params


def test_the_estimate_rises_on_dependent_pairs_and_is_near_zero_on_independent_ones():
  dependent, _ = _train_critic(True)
  independent, _ = _train_critic(False)
  assert dependent > 0.5
  assert abs(independent) < 0.1
  assert dependent > 10 * abs(independent)


def test_spectral_normalisation_keeps_every_layer_at_norm_one():
  _, params = _train_critic(True, steps=20)
  for leaf in jax.tree_util.tree_leaves(params):
    if leaf.ndim == 2:
      assert np.linalg.norm(np.asarray(leaf), 2) <= 1.0 + 1e-5
  big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)) * 5), "b": jnp.ones(3)}
  out = spectral_normalize(big)
  assert abs(np.linalg.norm(np.asarray(out["w"]), 2) - 1.0) < 1e-5
  assert np.array_equal(out["b"], big["b"])  # biases untouched
