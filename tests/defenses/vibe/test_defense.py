"""VIBE end to end on tiny poisoned images: the backbone trains inside EM; Leiden
filtering first."""

import json

import numpy as np

from tests.helpers import class_colour_folder, image_config, saved_state
from vibe_jax.experiment import train_and_evaluate


def test_vibe_ss_trains_the_backbone_on_poisoned_images(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root)
  config.defenses, config.baseline.lr = "none,vibe", 0.05
  results = train_and_evaluate(config, str(tmp_path / "run"))
  methods = [r["method"] for r in results["rows"]]
  assert methods == ["no defense", "VIBE-F"]
  poisoning = json.loads((tmp_path / "run" / "poisoning.json").read_text())
  assert poisoning["attack"] == "badnets" and poisoning["num_poisoned"] == int(0.25 * 64)
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if l["event"] == "estep"] == [0, 10]
  state = saved_state(tmp_path / "run", "vibe", 20)
  assert "backbone" in state["params"] and state["batch_stats"]
  # The backbone and its BatchNorm statistics moved between steps 10 and 20.
  earlier = saved_state(tmp_path / "run", "vibe", 10)
  kernel = lambda s: s["params"]["backbone"]["Conv_0"]["kernel"]
  assert np.all(np.isfinite(kernel(state)))
  assert not np.allclose(kernel(state), kernel(earlier))
  stats = lambda s: s["batch_stats"]["backbone"]["BatchNorm_0"]["mean"]
  assert not np.allclose(stats(state), stats(earlier))


def test_leiden_filtering_runs_before_vibe(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root, steps=10)
  config.leiden.enabled, config.leiden.num_neighbors = True, 5
  results = train_and_evaluate(config, str(tmp_path / "run"))
  report = json.loads((tmp_path / "run" / "leiden.json").read_text())
  kept = len(report["kept_indices"])
  assert kept + report["removed_examples"] == 64
  assert results["rows"][-1]["leiden_removed"] == report["removed_examples"]
  state = saved_state(tmp_path / "run", "vibe", 10)
  assert state["extra"]["pseudo_labels"].shape == (kept,)
