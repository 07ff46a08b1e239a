"""Features of a poisoned image dataset from a frozen backbone, cached on disk.

The FM variants of the reference (spec 5.6) extract backbone features once (test
transform, evaluation mode) for the training set, the clean test set and the
triggered test set, and train VIBE on them. `cached_features` does that and keeps
them in `workdir/features.npz` (a `FeatureData` file, usable with
`--config.data.source=npz`), with `features.json` naming what produced them; a
cache made by another backbone, weights file or dataset is recomputed, never
silently reused. Features are stored raw (the reference's first-run behaviour);
`data.l2_normalize` gives its later-run behaviour.

  python -m vibe_jax.extract --config=configs/cifar10/badnets_fm_f.py --workdir=DIR
"""

import json
import logging
import pathlib
import sys

import jax
import ml_collections
import numpy as np

from vibe_jax.data.features import FeatureData, load_npz, save_npz
from vibe_jax.data.sources import DatasetInfo

__all__ = ["cached_features"]

_log = logging.getLogger(__name__)


def _key(config: ml_collections.ConfigDict) -> dict:
  d = config.data
  return {"backbone": config.model.backbone, "weights": config.model.backbone_weights,
          "input_size": config.model.get("input_size", 0),
          "dataset": d.dataset, "attack": d.attack, "attack_params": d.attack_params,
          "seed": config.seed, "train_subset": d.train_subset, "test_subset": d.test_subset}


def cached_features(config: ml_collections.ConfigDict, data: FeatureData, info: DatasetInfo,
                    workdir: pathlib.Path) -> FeatureData:
  """Backbone features of `data`'s images, from `workdir/features.npz` if it holds
  exactly these (same backbone, weights, dataset, attack, seed, subsets)."""
  from vibe_jax import em  # pylint: disable=g-import-not-at-top

  path, meta = workdir / "features.npz", workdir / "features.json"
  key = _key(config)
  if path.exists() and meta.exists() and json.loads(meta.read_text()) == key:
    _log.info("using cached features %s", path)
    return load_npz(path)
  model = em.build_model(config, data.num_classes)
  prep = em.Inputs(info, config.model.get("input_size", 0))
  variables = em.initial_variables(model, data, config, prep)
  embed = lambda x: None if x is None else em.embed(model, variables, x, prep)
  features = data._replace(train_features=embed(data.train_features),
                           test_features=embed(data.test_features),
                           asr_features=embed(data.asr_features)).validate()
  save_npz(features, path)
  meta.write_text(json.dumps(key))
  _log.info("extracted %s features of %d training images to %s",
            features.train_features.shape[1], len(features.train_labels), path)
  return features


def main(argv):
  """Command line: see the module docstring."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from vibe_jax.data.load import load_data  # pylint: disable=g-import-not-at-top
  from vibe_jax.errors import InputError  # pylint: disable=g-import-not-at-top

  config = flags.FLAGS["config"].value
  workdir = pathlib.Path(flags.FLAGS["workdir"].value)
  workdir.mkdir(parents=True, exist_ok=True)
  try:
    data, info = load_data(config, workdir)
    if info is None:
      raise InputError("feature extraction needs config.data.source='images'")
    features = cached_features(config, data, info, workdir)
  except InputError as error:
    sys.exit(f"FATAL input error: {error}")
  print(f"wrote {workdir / 'features.npz'}: train {features.train_features.shape}, "
        f"test {features.test_features.shape}")


if __name__ == "__main__":
  from absl import app, flags as _flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, ".")
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  _flags.DEFINE_string("workdir", None, "Output directory.")
  _flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
