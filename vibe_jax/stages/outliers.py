"""Outlier filtering before VIBE-SS (spec 9): drop at most one Leiden cluster of
the training features whose score exceeds `delta`."""

import dataclasses
import logging
import pathlib
from typing import Optional

import ml_collections
import numpy as np

from vibe_jax import files, leiden
from vibe_jax.data.features import FeatureData
from vibe_jax.data.rows import take
from vibe_jax.report import JsonLines

__all__ = ["OutlierResult", "filter_outliers"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OutlierResult:
  """The training set without the removed cluster, and what was removed."""

  data: FeatureData
  features: np.ndarray  # the kept rows of the features clustered
  keep: np.ndarray  # (N,) bool over the original training set
  clusters: int
  removed: int
  removed_poisoned: Optional[int]
  path: pathlib.Path

  def summary(self) -> dict:
    """What results.json records of this stage."""
    return {"path": str(self.path), "clusters": self.clusters, "removed": self.removed,
            "removed_poisoned": self.removed_poisoned}


def filter_outliers(c: ml_collections.ConfigDict, features: np.ndarray, data: FeatureData,
                    seed: int, workdir: pathlib.Path, log: JsonLines,
                    stage: str = "leiden") -> OutlierResult:
  """Clusters `features` (rows of `data`'s training set) with the settings `c`
  (`config.leiden`); the kept original indices go to `workdir/leiden.json`."""
  keep, report = leiden.outlier_cluster_keep(
      features, data.train_labels, delta=c.delta, num_neighbors=c.num_neighbors, seed=seed)
  removed_poisoned = (int((~keep & data.train_poisoned).sum())
                      if data.train_poisoned is not None else None)
  report.update(removed_poisoned=removed_poisoned)
  path = workdir / "leiden.json"
  files.write_json(path, {**report, "kept_indices": np.flatnonzero(keep).tolist()}, None)
  log.truncate(stage, 0)  # a resumed run filters again: one row, not two
  log({"stage": stage, "step": 0, "event": "leiden",
       **{k: v for k, v in report.items() if k != "scores"}})
  _log.info("[leiden] %d clusters, removed cluster %s: %d examples (%s poisoned)",
            report["clusters"], report["removed_cluster"], report["removed_examples"],
            removed_poisoned)
  pick = lambda a: None if a is None else a[keep]
  kept = data._replace(train_features=take(data.train_features, keep),
                       train_labels=data.train_labels[keep],
                       train_true_labels=pick(data.train_true_labels),
                       train_poisoned=pick(data.train_poisoned))
  return OutlierResult(kept, features[keep], keep, report["clusters"],
                       report["removed_examples"], removed_poisoned, path)
