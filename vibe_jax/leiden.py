"""Leiden outlier-cluster removal (spec 9), on the CPU with igraph and leidenalg.

Before VIBE-SS starts, the reference clusters the features of the non-augmented
poisoned training set and drops at most one cluster that sits far from the others
(a cluster of triggered images tends to): a 50-NN graph (Euclidean, the union of
the neighbour relations, unweighted), Leiden with the modularity (RB
configuration) objective over resolutions linspace(0.1, 3, 50) until the partition
has as many clusters as there are classes plus one (or the closest count seen),
cluster centroids, and the score |a_i - mean_{j != i} a_j| of each cluster's
normalised mean distance a_i to all centroids; the highest-scoring cluster is
removed if its score exceeds delta = 0.275. Deviation: the reference's cuGraph
Leiden is unseeded; here the seed is fixed.
"""

from typing import Optional

import numpy as np

__all__ = ["outlier_scores", "knn_graph_edges", "leiden_partition", "outlier_cluster_keep"]


def outlier_scores(centroids: np.ndarray) -> np.ndarray:
  """Scores of spec 9 step 6 for (C, D) cluster centroids."""
  d = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)
  a = d.mean(axis=1)
  a = a / a.max()
  c = len(a)
  others = (a.sum() - a) / (c - 1)
  return np.abs(a - others)


def knn_graph_edges(features: np.ndarray, k: int = 50, chunk: int = 2048) -> np.ndarray:
  """Undirected edges (E, 2), i < j, of the union of each point's k nearest
  neighbours (Euclidean, brute force, self excluded)."""
  x = np.asarray(features, np.float32)
  sq = np.sum(x * x, axis=1)
  k = min(k, len(x) - 1)
  pairs = []
  for start in range(0, len(x), chunk):
    d = sq[start:start + chunk, None] - 2 * x[start:start + chunk] @ x.T + sq[None, :]
    rows = np.arange(start, min(start + chunk, len(x)))
    d[np.arange(len(rows)), rows] = np.inf
    nn = np.argpartition(d, k - 1, axis=1)[:, :k]
    pairs.append(np.stack([np.repeat(rows, k), nn.ravel()], axis=1))
  edges = np.concatenate(pairs)
  edges = np.sort(edges, axis=1)
  return np.unique(edges, axis=0)


def leiden_partition(num_nodes: int, edges: np.ndarray, target: int, seed: int,
                     resolutions: Optional[np.ndarray] = None) -> np.ndarray:
  """Cluster ids (N,) from the resolution sweep of spec 9 step 4."""
  # Lazy: the graph libraries are needed only when Leiden filtering is on.
  import igraph  # pylint: disable=g-import-not-at-top
  import leidenalg  # pylint: disable=g-import-not-at-top

  graph = igraph.Graph(n=num_nodes, edges=edges.tolist())
  if resolutions is None:
    resolutions = np.linspace(0.1, 3, 50)
  best, best_gap = None, None
  for gamma in resolutions:
    part = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition,
                                    resolution_parameter=float(gamma), seed=seed,
                                    n_iterations=-1)
    membership = np.asarray(part.membership)
    gap = abs(membership.max() + 1 - target)
    if best_gap is None or gap < best_gap:
      best, best_gap = membership, gap
    if gap == 0:
      break
  return best


def outlier_cluster_keep(features: np.ndarray, labels: np.ndarray, *, delta: float = 0.275,
                         num_neighbors: int = 50, seed: int = 0
                         ) -> tuple[np.ndarray, dict]:
  """(keep mask (N,), report) of spec 9: at most one outlier cluster removed."""
  target = len(np.unique(labels)) + 1
  clusters = leiden_partition(len(features), knn_graph_edges(features, num_neighbors),
                              target, seed)
  count = clusters.max() + 1
  centroids = np.stack([features[clusters == c].mean(axis=0) for c in range(count)])
  scores = outlier_scores(centroids)
  keep = np.ones(len(features), bool)
  removed = None
  if count > 1 and scores.max() > delta:
    removed = int(scores.argmax())
    keep = clusters != removed
  report = {"clusters": int(count), "target_clusters": int(target),
            "scores": [round(float(s), 6) for s in scores], "removed_cluster": removed,
            "removed_examples": int((~keep).sum())}
  return keep, report
