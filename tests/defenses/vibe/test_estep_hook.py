"""Pseudo-label metrics: agreement, poisoned relabelled, clean target relabelled."""

import numpy as np
import pytest

from vibe_jax.data.features import FeatureData
from vibe_jax.defenses.vibe.estep_hook import pseudo_label_metrics


def _data(given, true, poisoned):
  n = len(given)
  return FeatureData(train_features=np.zeros((n, 2), np.float32), train_labels=np.array(given),
                     test_features=np.zeros((1, 2), np.float32), test_labels=np.zeros(1, int),
                     train_true_labels=np.array(true),
                     train_poisoned=np.array(poisoned, bool)).validate()


def test_metrics_count_what_they_name():
  # Class 0 is the target: two clean target images (rows 0, 1), two poisoned (3, 5).
  data = _data([0, 0, 1, 0, 2, 0], [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 0, 1])
  labels = np.array([1, 0, 1, 1, 2, 0])  # one clean target image moved away; poison 3 fixed
  m = pseudo_label_metrics(labels, data)
  assert m["given_agreement"] == pytest.approx(4 / 6)
  assert m["true_agreement"] == pytest.approx(4 / 6)
  assert m["poisoned_relabelled"] == pytest.approx(1 / 2)
  assert m["poisoned_true_agreement"] == pytest.approx(1 / 2)
  assert m["clean_target_relabelled"] == pytest.approx(1 / 2)


def test_all_to_all_attacks_have_no_single_target():
  data = _data([1, 2, 0, 0], [0, 1, 0, 2], [1, 1, 0, 0])
  assert "clean_target_relabelled" not in pseudo_label_metrics(np.array([0, 1, 0, 2]), data)
