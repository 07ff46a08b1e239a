"""Class subsets (binary tasks) and the built-in sklearn digits images."""

import numpy as np
import pytest

from vibe_jax.config import base_config, validate
from vibe_jax.data import sources
from vibe_jax.data.load import load_data
from vibe_jax.errors import InputError


def _source(n=30, k=3):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  return sources.ArraySource(images, np.arange(n) % k, num_classes=k)


def _digits_config(classes="0,1", attack="rab_onepixel"):
  c = base_config()
  c.data.source, c.data.dataset = "images", "sklearn_digits"
  c.data.classes, c.data.attack = classes, attack
  c.data.placement = "device"
  return c


def test_class_subset_relabels_in_the_listed_order():
  source = _source()
  kept = sources.ClassSubset(source, (2, 0))
  assert len(kept) == 20 and kept.num_classes == 2 and kept.image_size == 4
  np.testing.assert_array_equal(kept.indices, [i for i in range(30) if i % 3 != 1])
  # Source class 2 -> 0, source class 0 -> 1.
  np.testing.assert_array_equal(kept.labels, np.where(kept.indices % 3 == 2, 0, 1))
  image, label = kept[1]  # source example 2, class 2
  assert label == 0 and image[0, 0, 0] == 2
  np.testing.assert_array_equal(kept.images([0, 1]), source.images([0, 2]))
  assert sources.parse_classes("2, 0") == (2, 0) and sources.parse_classes("") == ()


def test_sklearn_digits_source_is_fixed_and_offline():
  info = sources.dataset_info("sklearn_digits")
  assert info.image_size == 8 and info.small and info.tfds_name == ""
  train = sources.open_source("sklearn_digits", info.train_split)
  test = sources.open_source("sklearn_digits", info.test_split)
  assert len(test) == 539 and len(train) + len(test) == 1797
  assert train.num_classes == 10 and train.image_size == 8
  images = train.images(np.arange(len(train)))
  assert images.shape == (len(train), 8, 8, 3) and images.dtype == np.uint8
  assert images.max() == 255 and np.all(images[..., 0] == images[..., 2])  # grey
  # The split does not depend on the run seed: two configs, one split.
  first = load_data(_digits_config(classes="", attack="badnets")).data
  config = _digits_config(classes="", attack="badnets")
  config.seed = 5
  again = load_data(config).data
  np.testing.assert_array_equal(first.test_labels, again.test_labels)
  np.testing.assert_array_equal(first.test_features, again.test_features)
  np.testing.assert_array_equal(again.test_labels, test.labels)


def test_binary_digits_with_the_rab_one_pixel_attack():
  loaded = load_data(_digits_config())
  data = loaded.data
  assert data.num_classes == 2 and loaded.info.image_size == 8
  assert set(np.unique(data.train_labels)) == {0, 1}
  assert set(np.unique(data.test_labels)) == {0, 1}
  n = len(data.train_labels)
  assert 200 < n < 300  # about 70% of the ~360 zeros and ones
  poisoned = np.flatnonzero(data.train_poisoned)
  assert len(poisoned) == int(0.02 * n)
  assert np.all(data.train_labels[poisoned] == 0) and np.all(data.train_true_labels[poisoned] == 1)
  assert np.all(data.asr_labels == 0) and len(data.asr_labels) == np.sum(data.test_labels == 1)
  assert loaded.clean.key["classes"] == [0, 1]
  assert "classes" not in load_data(_digits_config(classes="")).clean.key


def test_class_subset_comes_before_the_training_subset():
  config = _digits_config(classes="3,5")
  config.data.train_subset = 100
  data = load_data(config).data
  assert len(data.train_labels) == 100 and set(np.unique(data.train_true_labels)) == {0, 1}


@pytest.mark.parametrize("classes, word", [
    ("0,one", "integer"),
    ("0,1,0", "duplicate"),
    ("1", "at least 2"),
])
def test_bad_class_lists_stop_in_validation_and_loading(classes, word):
  config = _digits_config(classes=classes)
  for call in (validate, load_data):
    with pytest.raises(InputError, match=word) as raised:
      call(config)
    assert "\n" not in str(raised.value)


def test_a_class_the_dataset_lacks_is_named_with_the_class_count():
  with pytest.raises(InputError, match=r"class 10 is not in the dataset.* 10 classes") as raised:
    load_data(_digits_config(classes="0,10"))
  assert "sklearn_digits" in str(raised.value) and "\n" not in str(raised.value)
  with pytest.raises(InputError, match="class -1"):
    load_data(_digits_config(classes="-1,0"))


def test_classes_need_an_image_source():
  config = base_config()
  config.data.source, config.data.classes = "digits", "0,1"
  with pytest.raises(InputError, match="source='images'"):
    validate(config)
