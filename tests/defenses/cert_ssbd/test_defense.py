"""Cert-SSBD / RAB: the vmapped ensemble step equals a loop over members, the sigma
store follows the storage-update rule, a certain ensemble certifies the largest
radius, and the defense runs, certifies and resumes through the experiment."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import ROOT, feature_config, saved_state
from vibe_jax import certify
from vibe_jax.data.features import FeatureData
from vibe_jax.defenses.cert_ssbd import CertifiedEnsemble, CertSettings
from vibe_jax.defenses.cert_ssbd.ensemble_step import (StepSettings, make_step,
                                                       training_noise)
from vibe_jax.errors import InputError
from vibe_jax.experiment import train_and_evaluate
from vibe_jax.models.ensemble import BinaryCNN, init_members, member_probs
from vibe_jax.train import TrainState


def _binary(seed=0, n=200, d=6, poison=8):
  """Two Gaussian classes along axis 0; `poison` class-1 examples get a trigger on
  axis 1 and label 0; the triggered test set has class 1 only."""
  rng = np.random.default_rng(seed)

  def sample(y):
    x = 0.3 * rng.normal(size=(len(y), d)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 1.0, -1.0)
    return x

  y = rng.integers(0, 2, n).astype(np.int32)
  x = sample(y)
  poisoned = np.zeros(n, bool)
  poisoned[np.flatnonzero(y == 1)[:poison]] = True
  x[poisoned, 1] += 3.0
  test_y = rng.integers(0, 2, 100).astype(np.int32)
  asr = sample(np.ones(50, np.int32))
  asr[:, 1] += 3.0
  return FeatureData(x, np.where(poisoned, 0, y).astype(np.int32), sample(test_y), test_y,
                     y, poisoned, asr, np.zeros(50, np.int32))


def _config(mode="sample_specific", steps=40):
  config = feature_config()
  config.defenses, config.evaluators = "cert_ssbd", "clean_acc,asr,certify"
  config.num_steps, config.batch_size, config.checkpoint.every = steps, 32, 20
  config.cert.sigma_mode, config.cert.members, config.cert.sigma = mode, 40, 0.5
  config.cert.sigma_lr, config.cert.lr = 0.05, 1e-2
  return config


@pytest.mark.parametrize("noise", ["fixed", "fresh"])
def test_vmapped_ensemble_step_equals_a_loop_over_members(noise):
  model, members = BinaryCNN(widths=(4, 8), hidden=8), 3
  base = jax.random.PRNGKey(3)
  x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 3))
  batch = {"x": x, "y": jnp.array([0, 1, 1, 0, 1, 0]), "index": jnp.arange(6) + 10,
           "key": jax.random.PRNGKey(7)}
  params = init_members(model, base, members, x[:1])
  tx = optax.adam(1e-2)
  state = TrainState.create_for(params=params, tx=tx,
                                extra={"sigma": jnp.full((20,), 0.3)})
  settings = StepSettings(members, False, noise, 0.0, 0, "reference")
  new, _ = jax.jit(make_step(model, settings, base))(state, batch)

  eps = training_noise(base, batch["key"], batch["index"], x.shape, members, noise) * 0.3
  for m in range(members):
    own = jax.tree_util.tree_map(lambda a: a[m], params)

    def loss(p, m=m):
      logits = model.apply({"params": p}, x + eps[m])
      return optax.sigmoid_binary_cross_entropy(logits, batch["y"].astype(jnp.float32)).mean()

    grads = jax.jit(jax.grad(loss))(own)
    updates, _ = tx.update(grads, tx.init(own), own)
    expected = optax.apply_updates(own, updates)
    got = jax.tree_util.tree_map(lambda a: a[m], new.params)
    for e, g in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
      np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  # Each member's noise is its own and, with fixed noise, each example's own.
  assert not np.allclose(eps[0], eps[1])


def test_storage_update_raises_sigma_only_where_the_margin_is_large():
  model, members = BinaryCNN(widths=(4, 8), hidden=8), 2
  base = jax.random.PRNGKey(0)
  x = jnp.zeros((4, 8, 8, 3))
  params = init_members(model, base, members, x[:1])
  # Output layer: bias +-8 for the first two rows' ... all rows see the same model, so
  # make the margin depend on the input instead: a zero model (p = 0.5 everywhere)
  # and a confident one (bias 8).
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  sure = jax.tree_util.tree_map(lambda a: a, zero)
  sure["Dense_1"]["bias"] = jnp.full_like(zero["Dense_1"]["bias"], 8.0)
  settings = StepSettings(members, True, "fresh", 0.01, 1, "reference")
  batch = {"x": x, "y": jnp.zeros(4, jnp.int32), "index": jnp.arange(4),
           "key": jax.random.PRNGKey(1)}
  for p, raised in ((zero, False), (sure, True)):
    state = TrainState.create_for(params=p, tx=optax.sgd(0.0),
                                  extra={"sigma": jnp.full((4,), 0.12)})
    new, _ = jax.jit(make_step(model, settings, base))(state, batch)
    delta = np.asarray(new.extra["sigma"]) - 0.12
    if raised:  # clamped p = 0.98: + lr * Phi^-1(0.98)
      np.testing.assert_allclose(delta, 0.01 * 2.05375, rtol=1e-4)
    else:
      np.testing.assert_allclose(delta, 0.0, atol=1e-7)


def test_certain_ensemble_certifies_the_largest_radius():
  model, members = BinaryCNN(widths=(4, 8), hidden=8), 100
  base = jax.random.PRNGKey(0)
  x = np.zeros((5, 8, 8, 3), np.float32)
  params = jax.tree_util.tree_map(jnp.zeros_like, init_members(model, base, members, x[:1]))
  params["Dense_1"]["bias"] = jnp.full_like(params["Dense_1"]["bias"], 40.0)  # p_1 = 1
  settings = CertSettings(members, False, 0.12, 0.0, 0, "reference", 0.001, 0, 0, 8)
  ensemble = CertifiedEnsemble(model, 64, settings)
  variables = {"members": params, "noise": jnp.ones((members, 8, 8, 3)),
               "sigma": jnp.asarray(0.12)}
  data = FeatureData(x, np.ones(5, np.int32), x, np.ones(5, np.int32))
  out = ensemble.certify(variables, data)["certified"]
  h = certify.hoeffding(0.001, members)
  assert out["clean"]["certified_accuracy"][0] == 1.0
  assert out["clean"]["max_radius"] == pytest.approx(certify.max_radius(0.12, h))
  # 0.12 * Phi^-1(1 - h) = 0.107: certified at r = 0, not at 0.25
  assert out["clean"]["certified_accuracy"][1] == 0.0
  ref = CertifiedEnsemble(model, 64, CertSettings(members, False, 0.12, 0.0, 0, "reference",
                                                  0.001, 1000, 0, 8))
  assert ref.certify(variables, data)["certified"]["hoeffding"] == pytest.approx(
      certify.hoeffding(0.001, 1000))


def test_member_probs_are_a_distribution():
  model = BinaryCNN(widths=(4, 8), hidden=8)
  x = jnp.ones((2, 8, 8, 3))
  params = init_members(model, jax.random.PRNGKey(0), 3, x[:1])
  p = member_probs(model, params, x, jnp.zeros((3, 1, 8, 8, 3)))
  assert p.shape == (3, 2, 2)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  # Members are initialised differently.
  assert not np.allclose(p[0], p[1])


@pytest.mark.parametrize("mode", ["sample_specific", "shared"])
def test_defense_trains_certifies_and_resumes(tmp_path, mode):
  data = _binary()
  results = train_and_evaluate(_config(mode), tmp_path / "run", data)
  row = results["rows"][0]
  assert row["method"] == ("Cert-SSBD (N_m=40)" if mode == "sample_specific"
                           else "RAB (N_m=40)")
  assert row["clean_acc"] > 0.9
  clean = row["certified"]["clean"]
  assert len(clean["radius"]) == 11 and clean["radius"][-1] == 2.5
  assert clean["certified_accuracy"][0] > 0.5  # 40 members: h = 0.29
  assert all(a >= b for a, b in zip(clean["certified_accuracy"], clean["certified_accuracy"][1:]))
  store = np.load(tmp_path / "run" / "cert" / "sigma_train.npy")
  if mode == "shared":
    assert np.all(store == 0.5)
  else:  # raised, by different amounts
    assert store.min() > 0.5 and store.std() > 0
  written = json.loads((tmp_path / "run" / "certified.json").read_text())
  assert written["rows"][0]["clean"] == clean and "commit" in written["provenance"]
  assert (tmp_path / "run" / "certified.png").stat().st_size > 0
  # A second run restores the finished stage and reports the same row.
  again = train_and_evaluate(_config(mode), tmp_path / "run", data)
  assert again["rows"][0]["certified"] == row["certified"]


def test_defense_refuses_more_than_two_classes(tmp_path):
  data = _binary()
  data = data._replace(train_labels=np.where(data.train_labels == 1, 2,
                                             data.train_labels).astype(np.int32))
  with pytest.raises(InputError, match="binary tasks.*3 classes"):
    train_and_evaluate(_config(), tmp_path / "run", data)


_EIGHT_DEVICES = """
import sys
import jax
from tests.defenses.cert_ssbd.test_defense import _binary, _config
from vibe_jax.experiment import train_and_evaluate
assert jax.device_count() == 8, jax.devices()
train_and_evaluate(_config(sys.argv[2], steps=20), sys.argv[1], _binary())
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample_specific", "shared"])
def test_members_split_over_eight_devices_match_one_device(tmp_path, mode):
  one = train_and_evaluate(_config(mode, steps=20), tmp_path / "one", _binary())
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, str(tmp_path / "eight"), mode],
                 check=True, cwd=ROOT, env=env)
  eight = json.loads((tmp_path / "eight" / "results.json").read_text())
  a = saved_state(tmp_path / "one", "cert_ensemble", 20)
  b = saved_state(tmp_path / "eight", "cert_ensemble", 20, a)
  for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a["extra"]["sigma"], b["extra"]["sigma"], rtol=1e-5)
  assert eight["rows"][0]["clean_acc"] == one["rows"][0]["clean_acc"]
