"""Features of a poisoned image dataset from a frozen backbone, cached on disk.

The FM variants of the reference (spec 5.6) extract backbone features once (test
transform, evaluation mode) for the training set, the clean test set and the
triggered test set, and train on them. On a CPU the backbone pass is most of the
cost of an FM run, so the work is split in two caches under
`config.model.feature_cache` (default `workdir/feature_cache`; a sweep points every
run at one directory):

  clean-<digest>.npz   features of every clean training and test image; shared by
                       every attack and seed of one dataset and backbone;
  attack-<digest>.npz  features of only what an attack changes: the training rows
                       whose pixels it altered and the triggered test set.

Each has a `.json` beside it recording what made it: backbone, weights file and its
SHA-256, input size and normalisation, dataset and splits (with a digest of the
labels), and for attack files the attack, its parameters, seed and changed rows. A
file is used only when that record equals the one the run would write, so a cache
from another backbone, weights, input size or attack is recomputed, never silently
reused. Extraction runs in blocks saved as it goes (`*.partial/`), so an interrupted
extraction resumes at the block it reached; progress shows images per second.

The run's assembled features go to `workdir/features.npz` (a `FeatureData` file,
usable with `--config.data.source=npz`) with `features.json`. Features are stored
raw (the reference's first-run behaviour); `data.l2_normalize` gives its later-run
behaviour.
"""

import dataclasses
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Optional

import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vibe_jax import files
from vibe_jax.data import rows as lazy
from vibe_jax.data.features import FeatureData, load_npz, save_npz
from vibe_jax.data.load import CleanViews
from vibe_jax.models.convert import file_sha256
from vibe_jax.train import Inference, Inputs, build_model, initial_variables

__all__ = ["FeaturesResult", "extract_features", "backbone_key"]

_log = logging.getLogger(__name__)

# Images per saved block (at least 8 evaluation batches): what an interruption loses.
_BLOCK_MIN = 1024


@dataclasses.dataclass(frozen=True)
class FeaturesResult:
  """The extracted features, where they are, and how much was computed."""

  data: FeatureData
  path: pathlib.Path
  cached: bool
  seconds: float
  images_embedded: int = 0  # images pushed through the backbone by this call

  def summary(self) -> dict:
    """What results.json records of this stage."""
    return {"path": str(self.path), "cached": self.cached, "seconds": round(self.seconds, 2),
            "dim": int(self.data.train_features.shape[1]),
            "images_embedded": self.images_embedded}


def backbone_key(config: ml_collections.ConfigDict) -> dict:
  """What determines a backbone's features of an image: name, weights (their
  SHA-256, not their path: moved or copied weights keep their caches; with random
  weights the seed that draws them), input size and normalisation."""
  weights = config.model.backbone_weights
  return {"backbone": config.model.backbone,
          "weights_sha256": file_sha256(weights) if weights else None,
          "init_seed": None if weights else config.seed,
          "input_size": config.model.input_size,
          "input_norm": config.model.get("input_norm", "dataset")}


def _digest(key: dict) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _matches(meta: pathlib.Path, key: dict) -> bool:
  try:
    return json.loads(meta.read_text()) == json.loads(json.dumps(key))
  except (OSError, ValueError):
    return False


class _Embedder:
  """Runs the backbone over rows in blocks, each block saved under a partial
  directory so an interrupted extraction resumes where it stopped."""

  def __init__(self, inference: Inference, variables: Any, block: int, progress: bool):
    self._inference, self._variables = inference, variables
    self._block, self._progress = block, progress
    self.embedded = 0

  def __call__(self, rows: Any, partial: pathlib.Path, what: str) -> Optional[np.ndarray]:
    if rows is None or len(rows) == 0:
      return None  # e.g. an attack that changes no training image of a tiny subset
    n = len(rows)
    partial.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, n, self._block))
    done = sum((partial / f"{i:06d}.npy").exists() for i in range(len(starts)))
    tty = self._progress and sys.stderr.isatty()
    bar = tqdm.tqdm(desc=what, total=n, unit="img", initial=min(done * self._block, n),
                    dynamic_ncols=True, mininterval=1.0) if tty else None
    parts, began, fresh = [], time.time(), 0
    for i, start in enumerate(starts):
      path, stop = partial / f"{i:06d}.npy", min(start + self._block, n)
      if path.exists():
        parts.append(np.load(path))
        continue
      out = self._inference.embed(self._variables, rows[start:stop])
      files.save_with(path, lambda tmp, out=out: np.save(tmp, out))
      parts.append(out)
      fresh += stop - start
      rate = fresh / max(time.time() - began, 1e-9)
      if bar is not None:
        bar.update(stop - start)
      else:
        _log.info("[%s] %d/%d images (%.1f images/s)", what, stop, n, rate)
    if bar is not None:
      bar.close()
    self.embedded += fresh
    return np.concatenate(parts)


def _cached(directory: pathlib.Path, kind: str, key: dict,
            make: Callable[[pathlib.Path], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The arrays of `directory/<kind>-<digest>.npz` when its `.json` equals `key`,
  else `make(partial_dir)`'s, written there first."""
  stem = directory / f"{kind}-{_digest(key)}"
  npz, meta, partial = stem.with_suffix(".npz"), stem.with_suffix(".json"), stem.with_suffix(".partial")
  if npz.exists() and _matches(meta, key):
    _log.info("using cached %s features %s", kind, npz)
    with np.load(npz) as f:
      return {k: f[k] for k in f.files}
  if partial.exists() and not _matches(partial / "key.json", key):
    shutil.rmtree(partial)  # blocks of something else (a digest collision or a stale key)
  partial.mkdir(parents=True, exist_ok=True)
  files.write_json(partial / "key.json", key, None)
  arrays = make(partial)
  files.save_with(npz, lambda tmp: np.savez(
      tmp, **{k: v for k, v in arrays.items() if v is not None}))
  files.write_json(meta, key, None)
  shutil.rmtree(partial, ignore_errors=True)
  return {k: v for k, v in arrays.items() if v is not None}


def _run_key(config: ml_collections.ConfigDict, clean: Optional[CleanViews]) -> dict:
  d = config.data
  return {**backbone_key(config), "dataset": d.dataset, "attack": d.attack,
          "attack_params": d.attack_params, "seed": config.seed,
          "train_subset": d.train_subset, "test_subset": d.test_subset,
          "clean": None if clean is None else clean.key}


def extract_features(config: ml_collections.ConfigDict, data: FeatureData, inputs: Inputs,
                     workdir: pathlib.Path, clean: Optional[CleanViews] = None,
                     poisoning: Optional[dict] = None) -> FeaturesResult:
  """Backbone features of `data`'s images (`config.model.backbone` with
  `config.model.backbone_weights`), in evaluation mode.

  With `clean` (the clean views of the same dataset, from `load_data`), clean
  features come from the shared cache and only the rows the attack changed and
  the triggered test set are embedded; `poisoning` (the run's poisoning record)
  then identifies the attack's cache. Without it every image is embedded.
  `workdir/features.npz` is reused when `features.json` matches this run exactly.
  """
  began = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path, meta = workdir / "features.npz", workdir / "features.json"
  key = _run_key(config, clean)
  if path.exists() and _matches(meta, key):
    _log.info("using cached features %s", path)
    return FeaturesResult(load_npz(path), path, True, time.time() - began)
  model = build_model(config.model, data.num_classes, backbone=config.model.backbone)
  variables = initial_variables(model, inputs.eval(jnp.asarray(data.train_features[:1])),
                                config.seed, config.model.backbone_weights or None)
  inference = Inference(model, inputs, config.eval_batch_size)
  embed = _Embedder(inference, variables, max(8 * config.eval_batch_size, _BLOCK_MIN),
                    config.progress_bar)
  cache = pathlib.Path(config.model.feature_cache or workdir / "feature_cache")
  cache.mkdir(parents=True, exist_ok=True)
  if clean is None:
    arrays = _cached(cache, "all", key, lambda p: {
        "train": embed(data.train_features, p / "train", "train images"),
        "test": embed(data.test_features, p / "test", "test images"),
        "asr": embed(data.asr_features, p / "asr", "triggered test images")})
    train = arrays["train"]
  else:
    clean_key = {**backbone_key(config), **clean.key}
    base = _cached(cache, "clean", clean_key, lambda p: {
        "train": embed(clean.train, p / "train", "clean training images"),
        "test": embed(clean.test, p / "test", "clean test images")})
    changed = np.flatnonzero(clean.changed)
    attack_key = {**clean_key, "attack": config.data.attack,
                  "attack_params": (poisoning or {}).get("params", config.data.attack_params),
                  "seed": config.seed,
                  "changed_sha256": hashlib.sha256(changed.astype(np.int64).tobytes()).hexdigest()}
    arrays = _cached(cache, "attack", attack_key, lambda p: {
        "changed": embed(lazy.take(data.train_features, clean.changed), p / "changed",
                         "poisoned training images"),
        "asr": embed(data.asr_features, p / "asr", "triggered test images")})
    train = base["train"].copy()
    if len(changed):
      train[changed] = arrays["changed"]
    arrays = {**arrays, "test": base["test"]}
  features = data._replace(train_features=train, test_features=arrays["test"],
                           asr_features=arrays.get("asr")).validate()
  files.save_with(path, lambda tmp: save_npz(features, tmp))
  files.write_json(meta, key, None)
  _log.info("features of %d training images (%d dims) in %s; %d images embedded",
            len(features.train_labels), features.train_features.shape[1], path,
            embed.embedded)
  return FeaturesResult(features, path, False, time.time() - began, embed.embedded)
