"""ABL: isolation finds the planted low-loss (triggered) examples, unlearning lowers
the backdoor; the phase arithmetic and the isolation rule."""

import json

import numpy as np
import pytest

from tests.helpers import clusters, feature_config, planted
from vibe_jax.defenses.abl import isolate, phase_steps
from vibe_jax.errors import InputError
from vibe_jax.experiment import train_and_evaluate


def _config(unlearning_epochs=20.0):
  config = feature_config()
  config.defenses, config.num_steps = "abl", 80
  config.abl.isolation_ratio, config.abl.unlearning_epochs = 0.1, unlearning_epochs
  config.abl.lr, config.abl.unlearning_lr = 0.0, 0.05  # lr 0: the no-defense rates
  return config


def test_isolate_takes_the_lowest_losses_stably():
  losses = np.array([0.5, 0.1, 0.9, 0.1, 0.3, 2.0])
  assert isolate(losses, 0.34).tolist() == [1, 3]
  assert isolate(losses, 0.0, minimum=1).tolist() == [1]


def test_phase_steps_share_the_budget():
  steps = phase_steps(1000, 128, 100, 0.25, 20.0, devices=8)
  assert steps["abl_isolation"] + steps["abl_finetune"] == 1000
  assert steps["abl_isolation"] == 250 and steps["unlearn_batch"] == 96
  assert steps["abl_unlearn"] == 21  # ceil(20 * 100 / 96)


def test_abl_isolates_triggered_examples_and_unlearning_lowers_the_backdoor(tmp_path):
  data = planted()
  unlearned = train_and_evaluate(_config(), tmp_path / "unlearned", data)
  kept = train_and_evaluate(_config(unlearning_epochs=0.0), tmp_path / "kept", data)
  row = unlearned["rows"][0]
  assert row["method"] == "ABL" and row["abl_isolated"] == 24
  # Isolation: most of the lowest-loss 10% are poisoned (15% of the data are).
  assert row["abl_isolated_poisoned"] >= 0.5
  isolated = np.load(tmp_path / "unlearned" / "abl" / "isolated.npy")
  assert data.train_poisoned[isolated].mean() == row["abl_isolated_poisoned"]
  # The same run without unlearning keeps a stronger backdoor.
  assert kept["stages"]["abl"]["steps"]["abl_unlearn"] == 0
  assert kept["rows"][0]["asr"] > 0.9 and row["asr"] < 0.5
  lines = [json.loads(l) for l in (tmp_path / "unlearned" / "metrics.jsonl").open()]
  assert {l["stage"] for l in lines if l.get("event") == "train"} == {
      "abl_isolation", "abl_finetune", "abl_unlearn"}


def test_a_bad_abl_parameter_is_one_line(tmp_path):
  config = _config()
  config.abl.ascent = "sideways"
  with pytest.raises(InputError, match="abl.ascent") as error:
    train_and_evaluate(config, tmp_path / "run", clusters())
  assert "\n" not in str(error.value) and "flooding" in str(error.value)


def test_a_bad_defense_name_lists_the_known_ones(tmp_path):
  config = _config()
  config.defenses = "none,abll"
  with pytest.raises(InputError, match="abll") as error:
    train_and_evaluate(config, tmp_path / "run", clusters())
  # (Other tests may register toy defenses in this process: check ours are named.)
  known = str(error.value).split("known: ")[1].split(", ")
  assert {"abl", "cbd", "none", "vibe"} <= set(known)
