"""CBD: its weights are lowest on the examples the confounder fits; both stages run
end to end; the critic trains when switched on."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import feature_config, planted, saved_state
from vibe_jax.defenses.cbd import Critic, sample_weights
from vibe_jax.defenses.cbd.defense import TALLIES, make_clean_step
from vibe_jax.train import build_model, classifier_state, initial_variables
from vibe_jax.errors import InputError
from vibe_jax.experiment import train_and_evaluate


def _config(mi=False):
  config = feature_config()
  config.defenses, config.num_steps, config.checkpoint.every = "cbd", 60, 60
  config.cbd.lr, config.cbd.mutual_information = 0.0, mi  # lr 0: the no-defense rates
  return config


def test_weights_are_lowest_where_the_confounder_loss_is():
  confounder = np.array([0.01, 2.0, 1.0, 0.02])
  clean = np.array([1.0, 1.0, 1.0, 1.0])
  w = sample_weights(confounder, clean)
  assert np.isclose(w.mean(), 1.0)
  assert set(np.argsort(w)[:2]) == {0, 3}


def test_the_step_down_weights_the_examples_the_confounder_fits():
  """A confounder whose class 0 is the trigger cluster, a clean model whose classes
  are the clean centres: one step's weights are lowest on the poisoned examples."""
  data = planted()
  model = build_model(feature_config().model, 4, dim=12)
  x, y, poisoned = data.train_features, data.train_labels, data.train_poisoned
  variables = initial_variables(model, jnp.asarray(x[:1]), 0)
  # mu_0 of the confounder is the poisoned examples' mean: it fits them.
  shortcut = poisoned | (data.train_true_labels != 0)
  confounder = classifier_state(variables, x[shortcut], y[shortcut], 4, optax.sgd(0.0), 0)
  clean = classifier_state(variables, x[~poisoned], y[~poisoned], 4, optax.sgd(0.1), 0,
                           extra={"confounder": {"params": confounder.params},
                                  **{k: jnp.zeros(()) for k in TALLIES}})
  step = make_clean_step(model, Critic(hidden=4), optax.adam(0.1), False, 0.01)
  batch = {"x": jnp.asarray(x), "y": jnp.asarray(y), "poisoned": jnp.asarray(poisoned),
           "key": jax.random.PRNGKey(0)}
  new, metrics = step(clean, batch)
  mean_poisoned = float(new.extra["poisoned_weight"] / new.extra["poisoned_seen"])
  assert float(new.extra["poisoned_seen"]) == poisoned.sum()
  assert mean_poisoned < 0.5  # the batch's mean weight is 1
  assert float(new.extra["poisoned_below_one"]) == poisoned.sum()
  assert np.isfinite(float(metrics["loss"]))


def test_cbd_runs_both_stages_and_reports_the_poisoned_weights(tmp_path):
  results = train_and_evaluate(_config(), tmp_path / "run", planted())
  row = results["rows"][0]
  assert row["method"] == "CBD"
  steps = results["stages"]["cbd"]["steps"]
  assert steps == {"cbd_confounder": 38, "cbd": 60}  # ceil(5 * 240 / 32)
  assert row["images_seen"] == (38 + 60) * 32
  assert row["cbd_poisoned_weight"] > 0 and 0 <= row["cbd_poisoned_downweighted"] <= 1
  state = saved_state(tmp_path / "run", "cbd", 60)
  assert "confounder" in state["extra"] and "critic" not in state["extra"]
  # 60 batches of 32 from epochs in which 15% of the examples are poisoned.
  assert abs(float(state["extra"]["poisoned_seen"]) / (60 * 32) - 0.15) < 0.03


def test_the_mutual_information_switch_trains_a_normalised_critic(tmp_path):
  train_and_evaluate(_config(mi=True), tmp_path / "run", planted())
  state = saved_state(tmp_path / "run", "cbd", 60)
  kernels = [np.asarray(layer["kernel"]) for layer in state["extra"]["critic"].values()]
  assert len(kernels) == 2
  assert all(np.linalg.norm(k, 2) <= 1.0 + 1e-4 for k in kernels)
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").open()]
  estimates = [r["mi"] for r in rows if r.get("stage") == "cbd" and r.get("event") == "train"]
  assert estimates and all(np.isfinite(estimates)) and any(e != 0 for e in estimates)


def test_a_bad_cbd_parameter_is_one_line(tmp_path):
  config = _config()
  config.cbd.confounder_epochs = -1.0
  with pytest.raises(InputError, match="cbd.confounder_epochs") as error:
    train_and_evaluate(config, tmp_path / "run", planted())
  assert "\n" not in str(error.value)
