"""The dataset a config names, as a `FeatureData` (features or poisoned images).

config.data.source:
  "digits"  the offline quickstart data (features = pixels);
  "npz"     a feature file (config.data.path);
  "images"  config.data.dataset (a built-in name such as a TFDS one or
            "sklearn_digits", or an image folder; config.data.data_dir for TFDS), only
            the classes config.data.classes lists ("2,0": class 2 -> 0, 0 -> 1; "" =
            all), poisoned with config.data.attack (config.data.attack_params,
            "key=value,...", overriding its defaults, the poisoned set drawn from config.seed); the
            poisoned index set and the attack's parameters come back as
            `Loaded.poisoning` for the caller to write (`poisoning.json`).
"""

import hashlib
import logging
import os
from typing import NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from vibe_jax import attacks, keyvalue
from vibe_jax.data import device
from vibe_jax.data.digits import badnets_digits
from vibe_jax.data.features import FeatureData, load_npz
from vibe_jax.data import rows as lazy
from vibe_jax.data.poisoned import TriggeredTestSet, poison_train_set
from vibe_jax.data.sources import (ClassSubset, DatasetInfo, ImageSource, SubsetSource,
                                   dataset_info, decodable, open_source, parse_classes,
                                   stratified_subset)
from vibe_jax.errors import InputError
from vibe_jax.models.vmf import l2_normalize

__all__ = ["Loaded", "CleanViews", "load_data", "placement", "device_memory_bytes"]

_log = logging.getLogger(__name__)


class CleanViews(NamedTuple):
  """The unpoisoned images behind a poisoned image dataset, read on demand, and
  which training rows the attack changed: what lets frozen-backbone features of
  the clean images be computed once and shared by every attack (only the changed
  rows and the triggered test set are attack-specific).

  Attributes:
    train / test: the clean training and test splits (subsets applied), as rows.
    changed: (N,) bool, the training rows whose pixels the attack altered
      (poisoned, and for adaptive attacks the covers).
    key: what identifies the clean splits (dataset, splits, kept classes, subset
      and its seed, a digest of the labels), JSON-ready.
  """

  train: lazy.ImageRows
  test: lazy.ImageRows
  changed: np.ndarray
  key: dict


class Loaded(NamedTuple):
  """The data of a run: arrays, the images' description (None for features),
  the poisoning record (attack, parameters, indices; None when not poisoned here),
  which the caller writes to `poisoning.json`, and for image datasets the clean
  views behind them."""

  data: FeatureData
  info: Optional[DatasetInfo]
  poisoning: Optional[dict]
  placement: str = "device"  # images: "device" (arrays) or "stream" (ImageRows)
  clean: Optional[CleanViews] = None


def _attack_params(text: str) -> dict:
  try:
    return keyvalue.parse(text)
  except ValueError as error:
    raise InputError(f"config.data.attack_params: {error}") from error


def _unit(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
  return None if a is None else np.asarray(l2_normalize(a))


def _subset(source: ImageSource, size: int, seed: int, what: str) -> ImageSource:
  if size > len(source):
    raise InputError(f"config.data.{what}_subset is {size}, but the {what} split has only "
                     f"{len(source)} images")
  return SubsetSource(source, stratified_subset(source.labels, size, seed))


def _keep_classes(source: ImageSource, classes: tuple[int, ...],
                  config: ml_collections.ConfigDict) -> ImageSource:
  try:
    return ClassSubset(source, classes)
  except InputError as error:
    raise InputError(f"config.data.classes={config.data.classes!r} for dataset "
                     f"{config.data.dataset!r}: {error}") from error


def _skip_bad(source: ImageSource, what: str) -> ImageSource:
  good = decodable(source)
  if len(good) < len(source):
    _log.warning("skipping %d of %d %s images that do not decode "
                 "(config.data.skip_bad_images)", len(source) - len(good), len(source), what)
    return SubsetSource(source, good)
  return source


def _declared(config, source_classes: int) -> int:
  k = config.data.num_classes
  if k and k < source_classes:
    raise InputError(f"config.data.num_classes is {k}, but the dataset declares "
                     f"{source_classes} classes")
  return k or source_classes


def device_memory_bytes() -> int:
  """Memory of one local device: the accelerator's limit, or on a CPU host (which
  reports none) the host's physical memory."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def placement(config: ml_collections.ConfigDict, num_images: int, side: int) -> str:
  """"device" or "stream" for `num_images` uint8 images of side `side`:
  `config.data.placement`, or for "auto", "stream" when they would take more than
  `config.data.device_share` of one device's memory (every device holds a copy)."""
  chosen = config.data.placement
  if chosen != "auto":
    return chosen
  needed = num_images * side * side * 3
  budget = config.data.device_share * device_memory_bytes()
  return "stream" if needed > budget else "device"


def _images(config: ml_collections.ConfigDict) -> Loaded:
  d = config.data
  classes = parse_classes(d.get("classes", ""))  # a bad list stops before any reading
  info = dataset_info(d.dataset)
  data_dir = d.get("data_dir") or None
  train_source = open_source(d.dataset, info.train_split, data_dir=data_dir)
  test_source = open_source(d.dataset, info.test_split, data_dir=data_dir)
  if classes:
    # Before the subsets, so that they draw from the kept classes only; before the
    # decode check, which then reads only the kept images.
    train_source = _keep_classes(train_source, classes, config)
    test_source = _keep_classes(test_source, classes, config)
  if d.skip_bad_images:
    train_source = _skip_bad(train_source, "training")
    test_source = _skip_bad(test_source, "test")
  if d.train_subset:
    train_source = _subset(train_source, d.train_subset, config.seed, "train")
  if d.test_subset:
    test_source = _subset(test_source, d.test_subset, config.seed, "test")
  k = _declared(config, train_source.num_classes)
  try:
    attack = attacks.build(d.attack, image_size=info.image_size, seed=config.seed,
                           num_classes=k, **_attack_params(d.attack_params))
  except (TypeError, ValueError) as error:
    raise InputError(f"config.data.attack {d.attack!r}: {error}") from error
  train = poison_train_set(train_source, attack)
  test = TriggeredTestSet(test_source, attack)
  where = placement(config, len(train) + len(test_source) + len(test),
                    train_source.image_size)
  if where == "stream":
    data = FeatureData(train_features=lazy.train_rows(train), train_labels=train.given_labels,
                       train_true_labels=train.true_labels, train_poisoned=train.poisoned,
                       test_features=lazy.clean_rows(test_source),
                       test_labels=test_source.labels, asr_features=lazy.triggered_rows(test),
                       asr_labels=test.labels, declared_classes=k)
  else:
    arrays = device.train_arrays(train)
    clean = device.clean_arrays(test_source)
    asr = device.triggered_arrays(test)
    data = FeatureData(train_features=arrays.images, train_labels=arrays.labels,
                       train_true_labels=arrays.true_labels, train_poisoned=arrays.poisoned,
                       test_features=clean.images, test_labels=clean.labels,
                       asr_features=asr.images, asr_labels=asr.labels, declared_classes=k)
  labels = np.concatenate([train_source.labels, test_source.labels]).astype(np.int64)
  key = {"dataset": d.dataset, "train_split": info.train_split, "test_split": info.test_split,
         "train_subset": d.train_subset, "test_subset": d.test_subset,
         # A subset is drawn from the seed; the whole split does not depend on it.
         "subset_seed": config.seed if (d.train_subset or d.test_subset) else None,
         "skip_bad_images": bool(d.skip_bad_images), "num_images": int(len(labels)),
         "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}
  if classes:
    # Only when set, so that caches of whole datasets made before this key keep
    # their key; a class subset's key then never equals a whole dataset's.
    key["classes"] = list(classes)
  clean = CleanViews(lazy.clean_rows(train_source), lazy.clean_rows(test_source),
                     train.poisoned | train.covered, key)
  return Loaded(data.validate(), info, train.metadata(), where, clean)


def load_data(config: ml_collections.ConfigDict) -> Loaded:
  """The data `config.data` names, validated (see `FeatureData.validate`); nothing
  is written."""
  source = config.data.source
  if source == "images":
    return _images(config)
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
  if config.data.num_classes:
    data = data._replace(declared_classes=config.data.num_classes)
  return Loaded(data.validate(), None, None)
