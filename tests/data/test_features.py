"""Feature files: round trip and clear errors."""

import numpy as np
import pytest

from vibe_jax.data import FeatureData, badnets_digits, load_npz, save_npz
from vibe_jax.errors import InputError, MissingFileError


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
