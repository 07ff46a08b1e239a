"""Image sources: folders, TFDS without TensorFlow, missing data named."""

import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import random_folder
from vibe_jax.data import sources
from vibe_jax.errors import InputError, MissingFileError


def test_image_folder_source_reads_sorted_classes(tmp_path):
  root = random_folder(tmp_path / "data")
  source = sources.open_source(str(root), "train")
  assert len(source) == 18 and source.num_classes == 3 and source.image_size == 32
  np.testing.assert_array_equal(source.labels, np.repeat([0, 1, 2], 6))
  image, label = source[7]
  want = np.asarray(Image.open(root / "train" / "dog" / "001.png"))
  np.testing.assert_array_equal(image, want)
  assert label == 1
  info = sources.dataset_info(str(root))
  assert info.small and info.test_split == "test" and info.image_size == 32


def test_large_image_folder_is_resized_to_224(tmp_path):
  root = random_folder(tmp_path / "big", size=300, per_class=1, fmt="jpg")
  info = sources.dataset_info(str(root))
  assert not info.small and info.image_size == 224
  image, _ = sources.open_source(str(root), "test")[0]
  assert image.shape == (224, 224, 3) and image.dtype == np.uint8


def test_missing_data_names_the_problem(tmp_path):
  with pytest.raises(InputError, match="unknown dataset"):
    sources.dataset_info(str(tmp_path / "nothing"))
  random_folder(tmp_path / "d")
  with pytest.raises(MissingFileError, match="does not exist"):
    sources.ImageFolderSource(tmp_path / "d", "validation")
  with pytest.raises(MissingFileError, match="tfds build cifar10 .*array_record"):
    sources.open_source("cifar10", "train", data_dir=str(tmp_path / "tfds"))


def test_tfds_source_reads_through_data_source_without_tensorflow():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  records = [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": i % 10}
             for i in range(12)]
  # JPEG bytes, as SkipDecoding returns them from real ArrayRecord files.
  buffer = __import__("io").BytesIO()
  Image.fromarray(records[3]["image"]).save(buffer, format="PNG")
  records[3] = {"image": buffer.getvalue(), "label": 3}

  def fake_source(builder, split, decoders=None, **kwargs):
    del builder, kwargs
    assert "image" in decoders and split == "train"
    return records

  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    source = sources.open_source("cifar10", "train")
  assert len(source) == 12 and source.num_classes == 10 and source.image_size == 32
  np.testing.assert_array_equal(source.labels, np.arange(12) % 10)
  image, label = source[3]
  assert image.shape == (32, 32, 3) and label == 3
  assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None
