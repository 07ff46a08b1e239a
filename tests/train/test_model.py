"""The classifier's initial variables: real random weights only where they are used."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vibe_jax.errors import InputError
from vibe_jax.models.cnn import SmallCNN
from vibe_jax.models.convert import save_variables
from vibe_jax.train import build_model, initial_variables
from vibe_jax.train import model as model_module


def _model(backbone=None, dim=None):
  head = ml_collections.ConfigDict(dict(variant="F", kappa=10.0, nu=0.5,
                                        prior_temperature=1.0))
  return build_model(head, 3, backbone=backbone, dim=dim)


def test_a_head_on_features_runs_no_initialiser_and_gets_zero_placeholders(monkeypatch):
  model = _model(dim=5)
  init = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))["params"]["head"]

  def compiled_init(*args):
    raise AssertionError("the random initialiser ran for a head on features")

  monkeypatch.setattr(model_module, "_init", compiled_init)
  head = initial_variables(model, jnp.zeros((1, 5)), seed=0)["params"]["head"]
  assert {k: np.shape(v) for k, v in head.items()} == {k: v.shape for k, v in init.items()}
  assert all(not np.any(np.asarray(v)) for v in head.values())


def test_random_backbone_weights_follow_the_seed(tmp_path):
  model = _model(backbone="small_cnn")
  sample = jnp.zeros((1, 8, 8, 3))
  a = initial_variables(model, sample, seed=0)["params"]["backbone"]
  b = initial_variables(model, sample, seed=0)["params"]["backbone"]
  c = initial_variables(model, sample, seed=1)["params"]["backbone"]
  leaves = lambda t: [np.asarray(x) for x in jax.tree_util.tree_leaves(t)]  # noqa: E731
  assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
  assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


def test_a_weights_file_replaces_the_backbone_and_a_misfit_is_one_clear_error(tmp_path):
  model = _model(backbone="small_cnn")
  sample = jnp.zeros((1, 8, 8, 3))
  cnn = SmallCNN().init(jax.random.PRNGKey(7), sample)
  save_variables(cnn, str(tmp_path / "w.msgpack"))
  variables = initial_variables(model, sample, seed=0, weights=str(tmp_path / "w.msgpack"))
  got = jax.tree_util.tree_leaves(variables["params"]["backbone"])
  want = jax.tree_util.tree_leaves(cnn["params"])
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(got, want))
  assert np.array_equal(
      np.asarray(variables["batch_stats"]["backbone"]["BatchNorm_0"]["var"]),
      np.asarray(cnn["batch_stats"]["BatchNorm_0"]["var"]))
  # Another network's weights (wider stages) name the mismatch in one line.
  wide = SmallCNN(widths=(16, 64, 128)).init(jax.random.PRNGKey(7), sample)
  save_variables(wide, str(tmp_path / "wide.msgpack"))
  with pytest.raises(InputError, match=r"does not fit the backbone's parameters: "
                     r"\['BatchNorm_0'\]\['bias'\] has shape \(16,\), the backbone's is "
                     r"\(32,\)"):
    initial_variables(model, sample, seed=0, weights=str(tmp_path / "wide.msgpack"))
