"""The one training loop: a run stopped at a checkpoint and resumed ends with the
parameters of an uninterrupted run."""

import shutil

import jax
import numpy as np

from tests.helpers import class_colour_folder, image_config, saved_state
from vibe_jax.experiment import train_and_evaluate


def test_image_run_resumes_to_the_same_parameters(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  train_and_evaluate(image_config(root, steps=30), str(tmp_path / "whole"))
  # A copy that lost everything after step 10, as a run killed there would.
  shutil.copytree(tmp_path / "whole", tmp_path / "split")
  for gone in ("vibe/checkpoints/20", "vibe/checkpoints/30", "results.json", "pseudo_labels.npy"):
    path = tmp_path / "split" / gone
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  train_and_evaluate(image_config(root, steps=30), str(tmp_path / "split"))  # resumes at 10
  a, b = saved_state(tmp_path / "whole", "vibe", 30), saved_state(tmp_path / "split", "vibe", 30)
  np.testing.assert_array_equal(a["extra"]["pseudo_labels"], b["extra"]["pseudo_labels"])
  for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
    np.testing.assert_array_equal(x, y)
