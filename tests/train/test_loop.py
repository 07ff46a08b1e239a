"""The one training loop: a run stopped at a checkpoint and resumed ends with the
parameters of an uninterrupted run; steps fused into one call equal single steps."""

import json
import shutil

import jax
import numpy as np
import pytest

from tests.helpers import class_colour_folder, clusters, feature_config, image_config, saved_state
from vibe_jax.experiment import train_and_evaluate
from vibe_jax.train import Hook, LoopSettings
from vibe_jax.train.loop import _steps_per_call


class _Every(Hook):
  def __init__(self, period):
    self._period = period

  def before_step(self, step, state, arrays):
    return state

  def period(self):
    return self._period


class _OnLogOnly(Hook):
  def on_log(self, step, state, row):
    row["seen"] = step


@pytest.mark.parametrize("log,ckpt,limit,hooks,fusable,expected", [
    (250, 500, 250, [_Every(250)], True, 250),  # the quickstart
    (20, 30, 250, [_Every(20)], True, 10),      # gcd of every boundary
    (250, 500, 64, [], True, 50),               # the largest divisor under the limit
    (250, 500, 250, [_Every(7)], True, 1),      # nothing in common: single steps
    (250, 500, 250, [_OnLogOnly()], True, 250),  # on_log only: no period
    (250, 500, 250, [Hook()], True, 250),
    (250, 500, 250, [_Every(1)], True, 1),
    (250, 500, 250, [], False, 1),              # streamed batches
])
def test_steps_per_call_never_crosses_a_boundary(log, ckpt, limit, hooks, fusable, expected):
  settings = LoopSettings(num_steps=1000, log_every=log, checkpoint_every=ckpt,
                          steps_per_call=limit)
  assert _steps_per_call(settings, hooks, fusable) == expected


def test_a_hook_that_overrides_before_step_alone_acts_at_every_step():
  class Custom(Hook):
    def before_step(self, step, state, arrays):
      return state

  assert Custom().period() == 1 and Hook().period() == 0


def _losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["stage"], r["step"], r["loss"]) for r in rows if r["event"] == "train"]


def test_fused_steps_equal_single_steps(tmp_path):
  """60 VIBE steps as 6 calls of 10 (auto) and as 60 calls: the same E-steps,
  pseudo-labels, logged losses and parameters to float tolerance."""
  single = feature_config()
  single.steps_per_call = 1
  train_and_evaluate(single, str(tmp_path / "single"), data=clusters())
  train_and_evaluate(feature_config(), str(tmp_path / "fused"), data=clusters())
  a, b = _losses(tmp_path / "single"), _losses(tmp_path / "fused")
  assert [r[:2] for r in a] == [r[:2] for r in b] == [("vibe", s) for s in (20, 40, 60)]
  np.testing.assert_allclose([r[2] for r in a], [r[2] for r in b], rtol=1e-5)
  a, b = saved_state(tmp_path / "single", "vibe", 60), saved_state(tmp_path / "fused", "vibe", 60)
  np.testing.assert_array_equal(a["extra"]["pseudo_labels"], b["extra"]["pseudo_labels"])
  assert int(a["step"]) == int(b["step"]) == 60
  for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
    np.testing.assert_allclose(x, y, atol=1e-5)


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
