"""Features of a poisoned image dataset from a frozen backbone, cached on disk.

The FM variants of the reference (spec 5.6) extract backbone features once (test
transform, evaluation mode) for the training set, the clean test set and the
triggered test set, and train on them. `extract_features` does that and keeps them
in `workdir/features.npz` (a `FeatureData` file, usable with
`--config.data.source=npz`), with `features.json` naming what produced them; a
cache made by another backbone, weights file or dataset is recomputed, never
silently reused. Features are stored raw (the reference's first-run behaviour);
`data.l2_normalize` gives its later-run behaviour.
"""

import dataclasses
import json
import logging
import pathlib
import time

import jax.numpy as jnp
import ml_collections

from vibe_jax import files
from vibe_jax.data.features import FeatureData, load_npz, save_npz
from vibe_jax.train import Inference, Inputs, build_model, initial_variables

__all__ = ["FeaturesResult", "extract_features"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FeaturesResult:
  """The extracted features and where they are."""

  data: FeatureData
  path: pathlib.Path
  cached: bool
  seconds: float

  def summary(self) -> dict:
    """What results.json records of this stage."""
    return {"path": str(self.path), "cached": self.cached, "seconds": round(self.seconds, 2),
            "dim": int(self.data.train_features.shape[1])}


def _key(config: ml_collections.ConfigDict) -> dict:
  d = config.data
  return {"backbone": config.model.backbone, "weights": config.model.backbone_weights,
          "input_size": config.model.get("input_size", 0),
          "dataset": d.dataset, "attack": d.attack, "attack_params": d.attack_params,
          "seed": config.seed, "train_subset": d.train_subset, "test_subset": d.test_subset}


def extract_features(config: ml_collections.ConfigDict, data: FeatureData, inputs: Inputs,
                     workdir: pathlib.Path) -> FeaturesResult:
  """Backbone features of `data`'s images (`config.model.backbone` with
  `config.model.backbone_weights`), from `workdir/features.npz` if it holds
  exactly these (same backbone, weights, dataset, attack, seed, subsets)."""
  began = time.time()
  path, meta = workdir / "features.npz", workdir / "features.json"
  key = _key(config)
  if path.exists() and meta.exists() and json.loads(meta.read_text()) == key:
    _log.info("using cached features %s", path)
    return FeaturesResult(load_npz(path), path, True, time.time() - began)
  model = build_model(config.model, data.num_classes, backbone=config.model.backbone)
  variables = initial_variables(model, inputs.eval(jnp.asarray(data.train_features[:1])),
                                config.seed, config.model.backbone_weights)
  inference = Inference(model, inputs, config.eval_batch_size)
  embed = lambda x: None if x is None else inference.embed(variables, x)
  features = data._replace(train_features=embed(data.train_features),
                           test_features=embed(data.test_features),
                           asr_features=embed(data.asr_features)).validate()
  files.save_with(path, lambda tmp: save_npz(features, tmp))
  files.write_json(meta, key, None)
  _log.info("extracted %s features of %d training images to %s",
            features.train_features.shape[1], len(features.train_labels), path)
  return FeaturesResult(features, path, False, time.time() - began)
