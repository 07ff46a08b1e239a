"""Poisoned training sets and the two test sets, applying the attack on the fly.

Every example is a dict: `image` (uint8 (H, W, 3), triggered if poisoned), `label`
(the given label), `true_label`, `index` (position in the training set, which the
E-step's pseudo-labels are indexed by) and `poisoned`.

The poisoned index set is drawn from the attack's seed (`poisoned_indices`) and
recorded with the attack's parameters by `metadata()` (a run writes it to
`poisoning.json`), so a run can be audited.
"""

import dataclasses
from typing import Any

import numpy as np

from vibe_jax.attacks.base import Attack
from vibe_jax.attacks.selection import cover_indices, poisoned_indices
from vibe_jax.data.sources import ImageSource

__all__ = ["PoisonedTrainSet", "TriggeredTestSet", "CleanSet", "poison_train_set"]


@dataclasses.dataclass
class PoisonedTrainSet:
  """A training split with `attack` applied to the examples in `poisoned`."""

  source: ImageSource
  attack: Attack
  poisoned: np.ndarray  # (N,) bool: triggered and relabelled
  given_labels: np.ndarray  # (N,) int32
  covered: np.ndarray  # (N,) bool: triggered, label kept (adaptive attacks)

  @property
  def true_labels(self) -> np.ndarray:
    """The clean labels."""
    return self.source.labels

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    image, label = self.source[index]
    if self.poisoned[index] or self.covered[index]:
      image = self.attack.apply(image[None], np.asarray([index]))[0]
    return {"image": image, "label": int(self.given_labels[index]),
            "true_label": label, "index": index, "poisoned": bool(self.poisoned[index])}

  def with_role(self, role: str) -> "PoisonedTrainSet":
    """The same examples seen through `attack.for_role(role)`."""
    return dataclasses.replace(self, attack=self.attack.for_role(role))

  def metadata(self) -> dict[str, Any]:
    """The attack, its parameters and the poisoned indices, JSON-ready."""
    params = {f.name: getattr(self.attack, f.name)
              for f in dataclasses.fields(self.attack)}
    return {"attack": self.attack.name, "params": params,
            "num_examples": len(self), "num_poisoned": int(self.poisoned.sum()),
            "poisoned_indices": np.flatnonzero(self.poisoned).tolist(),
            "cover_indices": np.flatnonzero(self.covered).tolist()}

def poison_train_set(source: ImageSource, attack: Attack) -> PoisonedTrainSet:
  """Chooses the poisoned examples from the attack's seed and relabels them."""
  chosen = poisoned_indices(source.labels, attack.rate, attack.target, attack.seed,
                            clean_label=attack.clean_label)
  attack.validate_poisoned(chosen)
  poisoned = np.zeros(len(source), bool)
  poisoned[chosen] = True
  given = source.labels.copy()
  given[chosen] = attack.poison_labels(source.labels[chosen])
  covered = np.zeros(len(source), bool)
  covered[cover_indices(len(source), attack.cover_rate, chosen, attack.seed)] = True
  return PoisonedTrainSet(source, attack.for_role("train"), poisoned,
                          given.astype(np.int32), covered)


class CleanSet:
  """A split as it is: ACC is measured on the clean test set."""

  def __init__(self, source: ImageSource):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    image, label = self.source[int(index)]
    return {"image": image, "label": label, "true_label": label, "index": int(index),
            "poisoned": False}


class TriggeredTestSet:
  """The ASR set (spec 11.1, 12): every image triggered and labelled by the attack.

  All-to-one: the target class is removed. All-to-all: every class is kept and the
  label is (y + 1) mod K.
  """

  def __init__(self, source: ImageSource, attack: Attack):
    self.source = source
    self.attack = attack.for_role("test")
    keep = np.ones(len(source), bool)
    if attack.target >= 0:
      keep = source.labels != attack.target
    self.indices = np.flatnonzero(keep)
    self.labels = attack.attack_labels(source.labels[self.indices]).astype(np.int32)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    index = int(self.indices[i])
    image, label = self.source[index]
    image = self.attack.apply_test(image[None], np.asarray([index]))[0]
    return {"image": image, "label": int(self.labels[i]), "true_label": label,
            "index": index, "poisoned": True}
