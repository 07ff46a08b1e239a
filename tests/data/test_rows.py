"""ImageRows reads the same pixels as the arrays built once, and the placement rule."""

import numpy as np
import pytest

from tests.helpers import image_config, random_folder
from vibe_jax import attacks
from vibe_jax.config import base_config
from vibe_jax.data import device, rows
from vibe_jax.data.load import load_data, placement
from vibe_jax.data.poisoned import TriggeredTestSet, poison_train_set
from vibe_jax.data.sources import open_source


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  root = random_folder(tmp_path_factory.mktemp("folder"), per_class=8)
  train_source, test_source = open_source(str(root), "train"), open_source(str(root), "test")
  attack = attacks.build("blend", image_size=32, seed=3, num_classes=3, rate=0.25)
  train = poison_train_set(train_source, attack)
  return train, test_source, TriggeredTestSet(test_source, attack)


def test_rows_equal_the_arrays_built_once(sets):
  train, test_source, triggered = sets
  lazy, full = rows.train_rows(train), device.train_arrays(train).images
  assert lazy.shape == full.shape and lazy.dtype == full.dtype and len(lazy) == len(full)
  picked = np.random.default_rng(0).permutation(len(full))[:9]
  assert train.poisoned[picked].any() and (~train.poisoned[picked]).any()
  np.testing.assert_array_equal(lazy[picked], full[picked])
  np.testing.assert_array_equal(lazy[3:11], full[3:11])
  np.testing.assert_array_equal(lazy[int(picked[0])], full[picked[0]])
  np.testing.assert_array_equal(np.asarray(lazy), full)
  np.testing.assert_array_equal(np.asarray(rows.clean_rows(test_source)),
                                device.clean_arrays(test_source).images)
  np.testing.assert_array_equal(np.asarray(rows.triggered_rows(triggered)),
                                device.triggered_arrays(triggered).images)


def test_take_keeps_rows_lazily_and_masks_are_refused_as_indices(sets):
  train = sets[0]
  lazy, full = rows.train_rows(train), device.train_arrays(train).images
  mask = np.arange(len(full)) % 3 == 0
  kept = rows.take(lazy, mask)
  assert rows.is_lazy(kept) and len(kept) == mask.sum()
  np.testing.assert_array_equal(np.asarray(kept), full[mask])
  np.testing.assert_array_equal(rows.take(full, mask), full[mask])
  with pytest.raises(TypeError, match="take"):
    lazy[mask]  # pylint: disable=pointless-statement


def test_auto_placement_streams_what_would_not_fit():
  config = base_config()
  assert placement(config, 60_000, 32) == "device"  # CIFAR-10: 184 MB
  assert placement(config, 1_331_167, 224) == "stream"  # ImageNet-1k: 200 GB
  config.data.placement = "device"
  assert placement(config, 1_331_167, 224) == "device"  # the user's choice wins
  config.data.placement, config.data.device_share = "auto", 1e-9
  assert placement(config, 10, 32) == "stream"


def test_streamed_load_holds_rows_not_pixels(tmp_path):
  config = image_config(random_folder(tmp_path))
  config.data.placement = "stream"
  streamed = load_data(config)
  config.data.placement = "device"
  kept = load_data(config)
  assert streamed.placement == "stream" and kept.placement == "device"
  for name in ("train_features", "test_features", "asr_features"):
    lazy, full = getattr(streamed.data, name), getattr(kept.data, name)
    assert rows.is_lazy(lazy) and isinstance(full, np.ndarray)
    np.testing.assert_array_equal(np.asarray(lazy), full)
  for name in ("train_labels", "train_true_labels", "train_poisoned", "test_labels",
               "asr_labels"):
    np.testing.assert_array_equal(getattr(streamed.data, name), getattr(kept.data, name))
  assert streamed.poisoning == kept.poisoning
