"""Feature-matrix datasets: what VIBE trains on when the backbone is fixed.

A `FeatureData` holds the training features with their given (possibly poisoned)
labels, optionally the true labels and poison flags (for logging), the clean test
set (ACC) and the triggered test set with the target class removed (ASR).

On disk it is an `.npz` with these keys (the optional ones may be absent):
  train_features (N, D) float, train_labels (N,) int,
  [train_true_labels (N,) int, train_poisoned (N,) bool],
  test_features (M, D), test_labels (M,),
  [asr_features (P, D), asr_labels (P,)]
"""

import os
import pathlib
import zipfile
from typing import NamedTuple, Optional

import numpy as np

from vibe_jax.errors import InputError, MissingFileError

__all__ = ["FeatureData", "load_npz", "save_npz"]

_REQUIRED = ("train_features", "train_labels", "test_features", "test_labels")
_OPTIONAL = ("train_true_labels", "train_poisoned", "asr_features", "asr_labels")


class FeatureData(NamedTuple):
  """Features and labels of a (poisoned) dataset; all NumPy arrays.

  The `*_features` arrays are (N, D) float features, or, for experiments that train
  a backbone, (N, H, W, 3) uint8 images (already poisoned, not yet augmented).
  """

  @property
  def is_images(self) -> bool:
    """Whether the inputs are images rather than feature vectors."""
    return self.train_features.ndim == 4

  train_features: np.ndarray
  train_labels: np.ndarray
  test_features: np.ndarray
  test_labels: np.ndarray
  train_true_labels: Optional[np.ndarray] = None
  train_poisoned: Optional[np.ndarray] = None
  asr_features: Optional[np.ndarray] = None
  asr_labels: Optional[np.ndarray] = None
  declared_classes: Optional[int] = None  # K the dataset (or config) declares

  @property
  def num_classes(self) -> int:
    """K: the declared number of classes, else one more than the largest training
    label (every other label must then be below it: see `validate`)."""
    if self.declared_classes:
      return int(self.declared_classes)
    return int(self.train_labels.max()) + 1

  def validate(self) -> "FeatureData":
    """Checks shapes and dtypes; returns self with canonical dtypes.

    Raises:
      InputError: naming the offending array.
    """
    arrays = {k: v for k, v in self._asdict().items()
              if v is not None and k != "declared_classes"}
    for name in ("train_features", "test_features"):
      if len(arrays[name]) == 0:
        raise InputError(f"{name} is empty: the {name.split('_')[0]} split has no examples")
    for name in ("train_labels", "test_labels", "train_true_labels", "asr_labels"):
      if name in arrays and not (np.issubdtype(arrays[name].dtype, np.integer) or
                                 arrays[name].dtype == bool):
        raise InputError(f"{name} must be integers, got {arrays[name].dtype}")
    for name in ("train_features", "test_features", "asr_features"):
      if name in arrays and not (arrays[name].ndim == 2 or (
          arrays[name].ndim == 4 and arrays[name].dtype == np.uint8)):
        raise InputError(f"{name} must be 2-D (examples, dims) features or uint8 "
                         f"(examples, H, W, 3) images, got {arrays[name].dtype} "
                         f"{arrays[name].shape}")
    dim = arrays["train_features"].shape[1:]
    for name in ("test_features", "asr_features"):
      if name in arrays and arrays[name].shape[1:] != dim:
        what = "dims" if len(dim) == 1 else "shape"
        got = arrays[name].shape[1] if len(dim) == 1 else arrays[name].shape[1:]
        want = dim[0] if len(dim) == 1 else dim
        raise InputError(f"{name} has {got} {what} but train_features has {want}")
    for prefix, rows in (("train", ("labels", "true_labels", "poisoned")),
                         ("test", ("labels",)), ("asr", ("labels",))):
      if f"{prefix}_features" not in arrays:
        continue
      n = arrays[f"{prefix}_features"].shape[0]
      for row in rows:
        name = f"{prefix}_{row}"
        if name in arrays and arrays[name].shape != (n,):
          raise InputError(f"{name} must have shape ({n},) to match "
                           f"{prefix}_features, got {arrays[name].shape}")
    if ("asr_features" in arrays) != ("asr_labels" in arrays):
      raise InputError("asr_features and asr_labels must be given together")
    out = {k: (v if k.endswith("features") and v.dtype == np.uint8 else
               np.asarray(v, np.float32) if k.endswith("features") else
               np.asarray(v, bool) if k == "train_poisoned" else
               np.asarray(v, np.int32)) for k, v in arrays.items()}
    for name in ("train_features", "test_features", "asr_features"):
      if name in out and out[name].dtype != np.uint8 and not np.all(np.isfinite(out[name])):
        bad = int(np.sum(~np.isfinite(out[name])))
        raise InputError(f"{name} has {bad} NaN or infinite values")
    if len(np.unique(out["train_labels"])) < 2:
      raise InputError("the training labels have fewer than two classes")
    k = self.declared_classes or int(out["train_labels"].max()) + 1
    source = "declared" if self.declared_classes else "max training label + 1"
    for name in ("train_labels", "test_labels", "train_true_labels", "asr_labels"):
      if name in out and out[name].size and out[name].min() < 0:
        raise InputError(f"{name} has negative labels")
      if name in out and out[name].size and out[name].max() >= k:
        raise InputError(f"{name} has label {int(out[name].max())}, but there are {k} "
                         f"classes ({source}); labels must be in [0, {k})")
    return FeatureData(**out, declared_classes=self.declared_classes)


def load_npz(path: str | os.PathLike) -> FeatureData:
  """Reads a `FeatureData` from an `.npz` file.

  Raises:
    MissingFileError: the file does not exist.
    InputError: a required key is missing (the message lists the keys present), or
      shapes do not fit together.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise MissingFileError(f"feature file {str(path)!r} does not exist")
  try:
    npz = np.load(path)
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise InputError(f"feature file {str(path)!r} is not a readable .npz ({error})") from error
  with npz:
    present = set(npz.files)
    missing = [k for k in _REQUIRED if k not in present]
    if missing:
      raise InputError(f"feature file {str(path)!r} lacks {missing}; it has "
                     f"{sorted(present)}")
    arrays = {k: npz[k] for k in _REQUIRED + _OPTIONAL if k in present}
    declared = int(npz["declared_classes"]) if "declared_classes" in present else None
  return FeatureData(**arrays, declared_classes=declared).validate()


def save_npz(data: FeatureData, path: str | os.PathLike) -> None:
  """Writes a `FeatureData` as an `.npz` readable by `load_npz`."""
  arrays = {k: v for k, v in data._asdict().items() if v is not None}
  np.savez(path, **arrays)
