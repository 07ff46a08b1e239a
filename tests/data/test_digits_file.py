"""The digits read from scikit-learn's file equal scikit-learn's loader."""

import numpy as np
from sklearn import datasets

from vibe_jax.data import digits_file


def test_load_digits_equals_sklearn():
  images, labels = digits_file.load_digits()
  expected = datasets.load_digits()
  assert digits_file._csv_path() is not None  # the fast path is the one tested
  np.testing.assert_array_equal(images, expected.images)
  np.testing.assert_array_equal(labels, expected.target)
