"""Which examples an attack poisons."""

import numpy as np
import pytest

from vibe_jax.attacks import poisoned_indices


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
