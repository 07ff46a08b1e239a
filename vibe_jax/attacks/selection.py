"""Which training examples an attack poisons, drawn from a seed (spec 11.1)."""

import numpy as np

__all__ = ["poisoned_indices", "cover_indices"]


def poisoned_indices(
    labels: np.ndarray, rate: float, target: int, seed: int, *, clean_label: bool = False
) -> np.ndarray:
  """Returns the sorted indices of the examples to poison.

  As the reference: a permutation of all indices, filtered to labels != target
  (dirty-label) or == target (clean-label), of which the first int(rate * N)
  (dirty-label) or int(rate * |target class|) (clean-label) are taken. target < 0
  (all-to-all) filters nothing. Unlike the reference, the permutation comes from
  `seed`, so every place that reads the data agrees.

  Args:
    labels: (N,) clean labels.
    rate: poisoning rate.
    target: attack target class, or -1 for all-to-all.
    seed: the poisoning seed.
    clean_label: select from the target class instead of the other classes.
  """
  labels = np.asarray(labels)
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"poisoning rate must be in [0, 1], got {rate}")
  perm = np.random.default_rng(seed).permutation(len(labels))
  if target < 0:
    pool, count = perm, int(rate * len(labels))
  elif clean_label:
    pool = perm[labels[perm] == target]
    count = int(rate * len(pool))
  else:
    pool, count = perm[labels[perm] != target], int(rate * len(labels))
  if count > len(pool):
    raise ValueError(f"cannot poison {count} examples: only {len(pool)} are eligible")
  return np.sort(pool[:count])


def cover_indices(num_examples: int, rate: float, exclude: np.ndarray, seed: int
                  ) -> np.ndarray:
  """Sorted indices of int(rate * N) cover examples, none of them in `exclude`.

  Cover examples (adaptive attacks) carry the trigger but keep their label; they are
  drawn from every class with a permutation of their own, from `seed`.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"cover rate must be in [0, 1], got {rate}")
  perm = np.random.default_rng((seed, 0xC0FE)).permutation(num_examples)
  pool = perm[~np.isin(perm, exclude)]
  return np.sort(pool[:int(rate * num_examples)])
