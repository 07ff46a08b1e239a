"""Poisoned-index selection, the digits quickstart data and feature files."""

import numpy as np
import pytest

from vibe_jax.attacks import poisoned_indices
from vibe_jax.data import FeatureData, badnets_digits, load_npz, save_npz
from vibe_jax.errors import InputError, MissingFileError


def test_poisoned_indices_are_exact_deterministic_and_off_target():
  labels = np.repeat(np.arange(10), 100)
  a = poisoned_indices(labels, 0.1, target=0, seed=3)
  assert len(a) == 100 and len(set(a)) == 100
  assert not np.any(labels[a] == 0)
  np.testing.assert_array_equal(a, poisoned_indices(labels, 0.1, target=0, seed=3))
  assert not np.array_equal(a, poisoned_indices(labels, 0.1, target=0, seed=4))
  clean = poisoned_indices(labels, 0.25, target=2, seed=0, clean_label=True)
  assert len(clean) == 25 and np.all(labels[clean] == 2)
  assert len(poisoned_indices(labels, 0.1, target=-1, seed=0)) == 100
  with pytest.raises(ValueError, match="rate"):
    poisoned_indices(labels, 1.5, target=0, seed=0)


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


def test_npz_round_trip_and_clear_errors(tmp_path):
  data = badnets_digits(seed=1)
  path = tmp_path / "f.npz"
  save_npz(data, path)
  back = load_npz(path)
  for name, value in data._asdict().items():
    np.testing.assert_array_equal(getattr(back, name), value)
  assert back.num_classes == 10

  with pytest.raises(MissingFileError, match="nope.npz"):
    load_npz(tmp_path / "nope.npz")
  np.savez(tmp_path / "partial.npz", train_features=data.train_features)
  with pytest.raises(InputError, match="train_labels"):
    load_npz(tmp_path / "partial.npz")
  bad = data._replace(train_labels=data.train_labels[:-1])
  with pytest.raises(InputError, match="train_labels must have shape"):
    bad.validate()
  bad = data._replace(test_features=data.test_features[:, :5])
  with pytest.raises(InputError, match="test_features has 5 dims"):
    bad.validate()
  with pytest.raises(InputError, match="together"):
    FeatureData(data.train_features, data.train_labels, data.test_features,
                data.test_labels, asr_features=data.asr_features).validate()


def test_attack_params_parse_typed_values():
  from vibe_jax.data.load import parse_params  # pylint: disable=g-import-not-at-top

  assert parse_params("rate=0.05,independent_fields=True,trigger_path=t.png,k=4") == {
      "rate": 0.05, "independent_fields": True, "trigger_path": "t.png", "k": 4}
  assert parse_params("") == {}
  with pytest.raises(InputError, match="key=value"):
    parse_params("rate")
