"""The quickstart's digits data."""

import numpy as np

from vibe_jax.data import badnets_digits


def test_badnets_digits_poisons_as_specified():
  data = badnets_digits(seed=0, rate=0.1, target=0, patch=2)
  n = len(data.train_labels)
  poisoned = data.train_poisoned
  assert poisoned.sum() == int(0.1 * n)
  assert np.all(data.train_labels[poisoned] == 0)
  assert np.all(data.train_true_labels[poisoned] != 0)
  np.testing.assert_array_equal(data.train_labels[~poisoned],
                                data.train_true_labels[~poisoned])
  images = data.train_features.reshape(n, 8, 8)
  assert np.all(images[poisoned][:, -2:, -2:] == 1.0)
  # The ASR set: every image triggered, none from the target class, label = target.
  assert np.all(data.asr_labels == 0)
  assert np.all(data.asr_features.reshape(-1, 8, 8)[:, -2:, -2:] == 1.0)
  assert len(data.asr_labels) == np.sum(data.test_labels != 0)
  again = badnets_digits(seed=0, rate=0.1, target=0, patch=2)
  np.testing.assert_array_equal(again.train_features, data.train_features)
