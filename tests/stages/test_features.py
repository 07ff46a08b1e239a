"""Frozen-backbone features: extracted once, cached, recomputed for another backbone."""

import json

import numpy as np

from tests.helpers import class_colour_folder, image_config, saved_state
from vibe_jax.data.load import load_data
from vibe_jax.experiment import train_and_evaluate
from vibe_jax.stages import extract_features
from vibe_jax.train import Inputs


def test_frozen_backbone_features_are_extracted_once_and_cached(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root)
  config.model.frozen_features = True
  run = tmp_path / "run"
  first = train_and_evaluate(config, str(run))
  # The stage hands its features on as a result; the config that ran is untouched.
  assert first["config"]["model"]["backbone"] == "small_cnn"
  assert first["config"] == json.loads((run / "config.json").read_text())
  features = np.load(run / "features.npz")
  assert features["train_features"].shape == (64, 128)  # small_cnn features
  assert features["asr_features"].shape[0] == 3 * 8  # test images of classes 1-3
  stamp = (run / "features.npz").stat().st_mtime_ns
  second = train_and_evaluate(config, str(run))  # the same run again: reuses the cache
  assert (run / "features.npz").stat().st_mtime_ns == stamp
  assert first["rows"][-1]["method"] == second["rows"][-1]["method"] == "VIBE-F"
  assert not first["stages"]["features"]["cached"] and second["stages"]["features"]["cached"]
  state = saved_state(run, "vibe", 20)
  assert "backbone" not in state["params"]  # VIBE ran on the cached features
  # Another backbone: the cache is recomputed, not reused.
  config.model.backbone = "resnet18_cifar"
  data, info = load_data(config)[:2]  # extraction on its own, not a run: no workdir check
  result = extract_features(config, data, Inputs(info), run)
  assert not result.cached and result.data.train_features.shape == (64, 512)
  assert np.load(run / "features.npz")["train_features"].shape == (64, 512)
