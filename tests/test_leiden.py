"""Leiden outlier-cluster removal: the golden score arithmetic and a planted outlier."""

import numpy as np

from vibe_jax import leiden


def test_outlier_scores_match_the_reference_golden_values():
  centroids = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0], [3, 3, 3]], float)
  np.testing.assert_allclose(leiden.outlier_scores(centroids),
                             [0.176010, 0.100555, 0.095467, 0.191068, 0.563100], atol=1e-6)


def test_knn_graph_is_the_symmetric_union():
  x = np.array([[0.0], [1.0], [3.0], [10.0]])
  edges = leiden.knn_graph_edges(x, k=1)
  assert {tuple(e) for e in edges} == {(0, 1), (1, 2), (2, 3)}


def test_a_far_away_cluster_is_removed_and_only_it():
  rng = np.random.default_rng(0)
  centres = np.eye(4)[:3] * 3.0
  clean = np.concatenate([c + 0.3 * rng.normal(size=(60, 4)) for c in centres])
  planted = np.array([0, 0, 0, 40.0]) + 0.3 * rng.normal(size=(20, 4))
  features = np.concatenate([clean, planted])
  labels = np.concatenate([np.repeat([0, 1, 2], 60), np.zeros(20, int)])
  keep, report = leiden.outlier_cluster_keep(features, labels, num_neighbors=10)
  assert report["removed_cluster"] is not None
  assert not keep[180:].any() and keep[:180].all()
  # Without an outlier, nothing is removed.
  keep, report = leiden.outlier_cluster_keep(clean, labels[:180], num_neighbors=10)
  assert keep.all() and report["removed_cluster"] is None
