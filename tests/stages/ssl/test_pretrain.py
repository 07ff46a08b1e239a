"""The pretraining stage: it feeds VIBE-SS and resumes to the same backbone."""

import json
import shutil

import jax
import numpy as np
import pytest

from tests.helpers import class_colour_folder, image_config, saved_state
from vibe_jax.experiment import train_and_evaluate
from vibe_jax.models.convert import load_variables


def test_simclr_pretraining_feeds_vibe_ss(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root, steps=10)
  config.ssl.enabled, config.ssl.method = True, "simclr"
  config.ssl.num_steps, config.ssl.batch_size, config.ssl.warmup_steps = 12, 16, 2
  config.ssl.knn_every, config.ssl.proj_hidden, config.ssl.proj_dim = 6, 64, 32
  config.log_every = 6
  config.optim.frozen.backbone = True  # so that VIBE's backbone must be the SSL one
  results = train_and_evaluate(config, str(tmp_path / "run"))
  assert results["rows"][-1]["ssl_wall_time_s"] > 0
  # The backbone reaches VIBE as the stage's result, not through the config.
  ssl_out = results["stages"]["vibe"]["ssl"]
  assert ssl_out["backbone_path"].endswith("ssl/backbone.msgpack") and ssl_out["steps"] == 12
  assert results["config"]["model"]["backbone_weights"] == ""
  assert results["config"] == json.loads((tmp_path / "run" / "config.json").read_text())
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  ssl = [l for l in lines if l["stage"] == "ssl"]
  assert [l["step"] for l in ssl] == [6, 12] and all(0 <= l["knn_acc"] <= 1 for l in ssl)
  assert (tmp_path / "run" / "ssl" / "backbone.msgpack").stat().st_size > 1000
  # The exported backbone is the SSL model's, and VIBE started from it.
  saved = saved_state(tmp_path / "run", "ssl", 12)
  exported = load_variables(str(tmp_path / "run" / "ssl" / "backbone.msgpack"))
  ssl_kernel = exported["params"]["Conv_0"]["kernel"]
  np.testing.assert_array_equal(ssl_kernel, saved["params"]["backbone"]["Conv_0"]["kernel"])
  vibe_kernel = saved_state(tmp_path / "run", "vibe", 10)["params"]["backbone"]
  vibe_kernel = vibe_kernel["Conv_0"]["kernel"]
  np.testing.assert_array_equal(vibe_kernel, ssl_kernel)


@pytest.mark.slow
def test_ssl_stage_resumes_to_the_same_backbone(tmp_path):
  root = class_colour_folder(tmp_path / "data")

  def run(workdir, ssl_steps):
    config = image_config(root, steps=2)
    config.ssl.enabled, config.ssl.num_steps, config.ssl.batch_size = True, ssl_steps, 16
    config.ssl.pred_hidden, config.ssl.queue_size = 32, 64  # All4One, the default
    config.ssl.warmup_steps, config.ssl.knn_every = 2, 0
    config.ssl.proj_hidden, config.ssl.proj_dim = 64, 32
    config.checkpoint.every, config.log_every = 3, 3
    train_and_evaluate(config, str(workdir))

  run(tmp_path / "whole", 6)
  # A copy that lost everything after SSL step 3, as a run killed there would.
  shutil.copytree(tmp_path / "whole", tmp_path / "split")
  for gone in ("ssl/checkpoints/6", "ssl/backbone.msgpack", "vibe", "baseline"):
    path = tmp_path / "split" / gone
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  run(tmp_path / "split", 6)  # resumes the SSL stage at step 3
  a = load_variables(str(tmp_path / "whole" / "ssl" / "backbone.msgpack"))
  b = load_variables(str(tmp_path / "split" / "ssl" / "backbone.msgpack"))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
