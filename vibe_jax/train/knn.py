"""Weighted k-nearest-neighbour accuracy on cosine similarity (the SSL monitor)."""

import numpy as np

from vibe_jax.models.vmf import l2_normalize

__all__ = ["knn_accuracy"]


def knn_accuracy(train_feats: np.ndarray, train_labels: np.ndarray,
                 test_feats: np.ndarray, test_labels: np.ndarray, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None) -> float:
  """Share of test points whose k nearest training points (cosine similarity),
  weighted exp(sim / temperature), vote for their label."""
  num_classes = num_classes or int(train_labels.max()) + 1
  train_feats = np.asarray(l2_normalize(train_feats))
  test_feats = np.asarray(l2_normalize(test_feats))
  correct = 0
  for start in range(0, len(test_feats), 1024):
    sim = test_feats[start:start + 1024] @ train_feats.T
    k_eff = min(k, sim.shape[1])
    top = np.argpartition(-sim, k_eff - 1, axis=1)[:, :k_eff]
    weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
    votes = np.zeros((len(sim), num_classes))
    np.add.at(votes, (np.arange(len(sim))[:, None], train_labels[top]), weights)
    correct += int(np.sum(votes.argmax(1) == test_labels[start:start + 1024]))
  return correct / len(test_feats)
