"""The defense registry: a new defense runs by name without touching the experiment;
unknown names are refused before any work."""

import dataclasses
import json
import re

import optax
import pytest

from tests.helpers import clusters, feature_config
from vibe_jax import defenses
from vibe_jax.config import base_config
from vibe_jax.defenses.base import (Defense, DefenseOutcome, build_classifier,
                                    initial_classifier)
from vibe_jax.errors import InputError
from vibe_jax.experiment import train_and_evaluate
from vibe_jax.train import classifier_state, variables


@defenses.register("class_means_only")
@dataclasses.dataclass(frozen=True)
class ClassMeansOnly(Defense):
  """A toy defense: the classifier at its initial prototypes (class means of the
  given labels), never trained."""

  def run(self, ctx):
    model = build_classifier(ctx)
    init, features = initial_classifier(ctx, model, None)
    state = classifier_state(init, features, ctx.data.train_labels, ctx.data.num_classes,
                             optax.set_to_zero(), ctx.config.seed)
    ctx.log({"stage": "class_means_only", "step": 0, "event": "train", "loss": 0.0})
    return DefenseOutcome("class means", model, variables(state), ctx.inputs,
                          row={"toy": 1}, outputs={"trained": False})


def test_a_registered_defense_runs_by_name_and_gets_its_row(tmp_path):
  config = feature_config()
  config.defenses = "class_means_only,vibe"
  config.evaluators = "clean_acc,asr,knn"
  results = train_and_evaluate(config, tmp_path, data=clusters())
  toy, vibe = results["rows"]
  assert toy["method"] == "class means" and toy["toy"] == 1 and vibe["method"] == "VIBE-A"
  assert toy["clean_acc"] > 0.8 and 0.0 <= toy["knn_acc"] <= 1.0
  assert results["stages"]["class_means_only"] == {"trained": False}
  assert "| class means |" in (tmp_path / "results.md").read_text()
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert [r["method"] for r in on_disk["rows"]] == ["class means", "VIBE-A"]


@pytest.mark.parametrize("key,value,message", [
    ("defenses", "none,vibes", "unknown ['vibes']"),
    ("defenses", "", "empty"),
    ("evaluators", "clean_acc,accuracy", "unknown ['accuracy']"),
])
def test_unknown_names_are_refused_before_any_work(tmp_path, key, value, message):
  config = feature_config()
  setattr(config, key, value)
  with pytest.raises(InputError, match=re.escape(message)):
    train_and_evaluate(config, tmp_path / "run", data=clusters())
  assert not (tmp_path / "run").exists()


def test_every_defense_owns_its_config_section():
  config = base_config()
  assert "baseline" in config and {"estep", "ssl", "leiden"} <= set(config)
  assert {"none", "vibe"} <= set(defenses.names())
