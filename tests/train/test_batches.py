"""The two batch sources give the same batches, so a streamed run equals a
device-resident one, and a streamed run resumes without replaying its batches."""

import shutil

import jax
import numpy as np
import pytest

from tests.helpers import class_colour_folder, image_config, saved_state
from vibe_jax import attacks
from vibe_jax.data import device, rows
from vibe_jax.data.poisoned import poison_train_set
from vibe_jax.data.sources import open_source
from vibe_jax.experiment import train_and_evaluate
from vibe_jax.train import DeviceArrays, StreamBatches, batch_source


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return class_colour_folder(tmp_path_factory.mktemp("data"))


def test_stream_batches_equal_the_device_gathers(folder):
  train = poison_train_set(open_source(str(folder), "train"),
                           attacks.build("badnets", image_size=32, seed=0, num_classes=4,
                                         rate=0.25))
  full = device.train_arrays(train)
  kept = batch_source({"x": full.images, "y": full.labels}, 8, 5)
  streamed = batch_source({"x": rows.train_rows(train), "y": full.labels}, 8, 5, prefetch=2)
  assert isinstance(kept, DeviceArrays) and isinstance(streamed, StreamBatches)
  placed = {"x": full.images, "y": full.labels}
  # Steps 3..11 cross an epoch boundary (64 images, 8 per batch).
  for index, batch in zip(kept.steps(3, 12), streamed.steps(3, 12)):
    want = kept.gather(placed, index)
    np.testing.assert_array_equal(batch["index"], index)
    np.testing.assert_array_equal(batch["x"], want["x"])
    np.testing.assert_array_equal(batch["y"], want["y"])
  assert list(streamed.steps(4, 4)) == []


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def test_streamed_run_equals_the_device_resident_run_and_resumes(folder, tmp_path):
  def config(where):
    c = image_config(folder, steps=10)
    c.defenses, c.data.placement = "none,vibe", where
    c.estep.period, c.checkpoint.every = 5, 5
    return c

  runs = {where: train_and_evaluate(config(where), tmp_path / where)
          for where in ("device", "stream")}
  for stage in ("baseline", "vibe"):
    a, b = saved_state(tmp_path / "device", stage, 10), saved_state(tmp_path / "stream", stage, 10)
    for x, y in zip(_leaves(a["params"]), _leaves(b["params"])):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.load(tmp_path / "device" / "pseudo_labels.npy"),
                                np.load(tmp_path / "stream" / "pseudo_labels.npy"))
  for a, b in zip(runs["device"]["rows"], runs["stream"]["rows"]):
    assert a["clean_acc"] == pytest.approx(b["clean_acc"]) and a["asr"] == pytest.approx(b["asr"])
  assert runs["stream"]["stages"]["data"]["placement"] == "stream"
  # Killed after step 5: the streamed run resumes there and ends where it would have.
  shutil.copytree(tmp_path / "stream", tmp_path / "split")
  for gone in ("vibe/checkpoints/10", "results.json", "pseudo_labels.npy"):
    path = tmp_path / "split" / gone
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  train_and_evaluate(config("stream"), tmp_path / "split")
  a, b = saved_state(tmp_path / "stream", "vibe", 10), saved_state(tmp_path / "split", "vibe", 10)
  for x, y in zip(_leaves(a["params"]), _leaves(b["params"])):
    np.testing.assert_array_equal(x, y)
