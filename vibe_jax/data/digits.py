"""BadNets-poisoned 8x8 digits: the offline quickstart dataset.

scikit-learn ships the 1,797 digits (values 0..16), so this needs no download. A
`patch` x `patch` square of maximal intensity in the bottom-right corner is the
trigger; `rate` * N training examples of classes other than `target` get it and the
label `target`. Features are the 64 pixels scaled to [0, 1].
"""

import numpy as np

from vibe_jax.attacks.selection import poisoned_indices
from vibe_jax.data.digits_file import load_digits
from vibe_jax.data.features import FeatureData

__all__ = ["badnets_digits", "add_corner_patch"]


def add_corner_patch(images: np.ndarray, patch: int) -> np.ndarray:
  """Returns a copy of (B, 8, 8) images in [0, 1] with the bottom-right patch set to 1."""
  out = images.copy()
  out[:, -patch:, -patch:] = 1.0
  return out


def badnets_digits(
    *, seed: int = 0, rate: float = 0.1, target: int = 0, patch: int = 2,
    test_fraction: float = 0.3,
) -> FeatureData:
  """The digits split into train/test from `seed`, the train split poisoned.

  Args:
    seed: drives the split and the choice of poisoned examples.
    rate: poisoned share of the training set.
    target: attack target class.
    patch: trigger side in pixels.
    test_fraction: share of the digits held out for testing.
  """
  pixels, digit_labels = load_digits()
  images = (pixels / 16.0).astype(np.float32)
  labels = digit_labels.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  n_test = int(round(test_fraction * len(labels)))
  test, train = order[:n_test], order[n_test:]

  x, true = images[train], labels[train]
  poisoned = np.zeros(len(train), bool)
  poisoned[poisoned_indices(true, rate, target, seed)] = True
  x[poisoned] = add_corner_patch(x[poisoned], patch)
  given = np.where(poisoned, target, true).astype(np.int32)

  keep = labels[test] != target
  asr_x = add_corner_patch(images[test][keep], patch)
  return FeatureData(
      train_features=x.reshape(len(x), -1),
      train_labels=given,
      train_true_labels=true,
      train_poisoned=poisoned,
      test_features=images[test].reshape(n_test, -1),
      test_labels=labels[test],
      asr_features=asr_x.reshape(len(asr_x), -1),
      asr_labels=np.full(len(asr_x), target, np.int32),
  ).validate()
