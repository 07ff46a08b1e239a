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


def test_e_step_solvers_give_the_pseudo_labels_of_ott(tmp_path):
  """Our blocked Sinkhorn, and log P recomputed from the features in every iteration
  (on device-resident images, and from the streamed E-step's row-sharded features),
  give the labels of the default ott-jax E-step."""
  root = class_colour_folder(tmp_path / "data", per_class=4)
  runs = {"ott": ("ott", False, "device"), "blocked": ("blocked", False, "device"),
          "recompute": ("ott", True, "device"), "streamed": ("blocked", True, "stream")}
  for name, (solver, recompute, placement) in runs.items():
    config = image_config(root, steps=6)
    config.estep.solver, config.estep.recompute = solver, recompute
    config.data.placement, config.estep.period, config.checkpoint.every = placement, 3, 6
    train_and_evaluate(config, tmp_path / name)
  rows = {n: [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").open()
              if '"estep"' in line] for n in runs}
  for name in runs:
    np.testing.assert_array_equal(np.load(tmp_path / "ott" / "pseudo_labels.npy"),
                                  np.load(tmp_path / name / "pseudo_labels.npy"), err_msg=name)
    assert len(rows[name]) == 2 and all(r["sinkhorn_converged"] for r in rows[name])
    assert [r["given_agreement"] for r in rows[name]] == [
        r["given_agreement"] for r in rows["ott"]]
