"""The dataset a config names, as a `FeatureData` (features or poisoned images).

config.data.source:
  "digits"  the offline quickstart data (features = pixels);
  "npz"     a feature file (config.data.path);
  "images"  config.data.dataset (a TFDS name or an image folder, config.data.data_dir
            for TFDS) poisoned with config.data.attack (config.data.attack_params,
            "key=value,...", overriding its defaults, the poisoned set drawn from config.seed); the
            poisoned index set and the attack's parameters are written to
            `workdir/poisoning.json`.
"""

import pathlib
from typing import Optional

import ml_collections
import numpy as np

from vibe_jax import attacks, keyvalue
from vibe_jax.data import device
from vibe_jax.data.digits import badnets_digits
from vibe_jax.data.features import FeatureData, load_npz
from vibe_jax.data.poisoned import TriggeredTestSet, poison_train_set
from vibe_jax.data.sources import (DatasetInfo, SubsetSource, dataset_info, open_source,
                                   stratified_subset)
from vibe_jax.errors import InputError
from vibe_jax.models.vmf import l2_normalize

__all__ = ["load_data"]


def _attack_params(text: str) -> dict:
  try:
    return keyvalue.parse(text)
  except ValueError as error:
    raise InputError(f"config.data.attack_params: {error}") from error


def _unit(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
  return None if a is None else np.asarray(l2_normalize(a))


def _images(config: ml_collections.ConfigDict, workdir: Optional[pathlib.Path]
            ) -> tuple[FeatureData, DatasetInfo]:
  d = config.data
  info = dataset_info(d.dataset)
  data_dir = d.get("data_dir") or None
  train_source = open_source(d.dataset, info.train_split, data_dir=data_dir)
  test_source = open_source(d.dataset, info.test_split, data_dir=data_dir)
  if d.get("train_subset"):
    train_source = SubsetSource(train_source, stratified_subset(
        train_source.labels, d.train_subset, config.seed))
  if d.get("test_subset"):
    test_source = SubsetSource(test_source, stratified_subset(
        test_source.labels, d.test_subset, config.seed))
  try:
    attack = attacks.build(d.attack, image_size=info.image_size, seed=config.seed,
                           num_classes=train_source.num_classes, **_attack_params(d.attack_params))
  except ValueError as error:
    raise InputError(str(error)) from error
  train = poison_train_set(train_source, attack)
  if workdir is not None:
    train.write_metadata(workdir / "poisoning.json")
  arrays = device.train_arrays(train)
  clean = device.clean_arrays(test_source)
  asr = device.triggered_arrays(TriggeredTestSet(test_source, attack))
  data = FeatureData(train_features=arrays.images, train_labels=arrays.labels,
                     train_true_labels=arrays.true_labels, train_poisoned=arrays.poisoned,
                     test_features=clean.images, test_labels=clean.labels,
                     asr_features=asr.images, asr_labels=asr.labels)
  return data.validate(), info


def load_data(config: ml_collections.ConfigDict, workdir: Optional[pathlib.Path] = None
              ) -> tuple[FeatureData, Optional[DatasetInfo]]:
  """(data, info): info describes the images (None for feature vectors)."""
  source = config.data.source
  if source == "images":
    return _images(config, workdir)
  if source == "digits":
    data = badnets_digits(seed=config.seed, rate=config.data.poison_rate,
                          target=config.data.target, patch=config.data.patch)
  elif source == "npz":
    if not config.data.path:
      raise InputError("config.data.path must name an .npz file when "
                       "config.data.source='npz'")
    data = load_npz(config.data.path)
  else:
    raise InputError(f"unknown config.data.source {source!r}; use 'digits', 'npz' or "
                     "'images'")
  if config.data.l2_normalize:
    # Spec 5.6 / quirk 3: the reference uses unit-norm cached features on every run
    # after the first; this switch picks that behaviour.
    data = data._replace(train_features=_unit(data.train_features),
                         test_features=_unit(data.test_features),
                         asr_features=_unit(data.asr_features))
  return data, None
