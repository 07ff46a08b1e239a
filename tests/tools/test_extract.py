"""The feature-extraction command: features of a poisoned image folder, cached."""

import json
import subprocess
import sys

import numpy as np

from tests.helpers import ROOT, class_colour_folder

CONFIG = """
from tests.helpers import image_config

def get_config():
  c = image_config({root!r})
  c.model.feature_cache = {cache!r}
  return c
"""


def test_extract_writes_features_and_their_record(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = tmp_path / "config.py"
  config.write_text(CONFIG.format(root=str(root), cache=str(tmp_path / "cache")))
  run = subprocess.run([sys.executable, "-m", "vibe_jax.tools.extract", f"--config={config}",
                        f"--workdir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  features = np.load(tmp_path / "out" / "features.npz")
  assert features["train_features"].shape == (64, 128)
  record = json.loads((tmp_path / "out" / "features.json").read_text())
  assert record["backbone"] == "small_cnn" and record["attack"] == "badnets"
  assert json.loads((tmp_path / "out" / "poisoning.json").read_text())["num_poisoned"] == 16
  assert len(list((tmp_path / "cache").glob("clean-*.npz"))) == 1
