"""Image splits read on demand: the streaming counterpart of `data.device`'s arrays.

`ImageRows` stands where a uint8 (N, H, W, 3) array stands in a `FeatureData`
(`shape`, `dtype`, `len`, `rows[i]`, `rows[a:b]`, `rows[indices]`), but keeps
nothing but the indices in memory: each read decodes the images it needs and
applies the attack to them with the same `attack.apply` / `attack.apply_test`
as `data.device.train_arrays` / `triggered_arrays`, so a row read here equals the
row of the array built there. Poisoning is a pure function of (pixels, index,
seed), so reading rows in any order, on any process, gives the same pixels.

ImageNet-1k is 1.28 million images (193 GB as uint8 at 224 px): it can only be read
this way. `take(a, mask)` keeps the rows of a mask of either kind (lazily for
`ImageRows`).
"""

from typing import Optional, Union

import numpy as np

from vibe_jax.attacks.base import Attack
from vibe_jax.data.poisoned import PoisonedTrainSet, TriggeredTestSet
from vibe_jax.data.sources import ImageSource

__all__ = ["ImageRows", "train_rows", "clean_rows", "triggered_rows", "take", "is_lazy"]

_Index = Union[int, slice, np.ndarray, list]


class ImageRows:
  """Rows `positions` of `source`, decoded on read; rows with `triggered` set get
  the attack (`mode` "train": `attack.apply`; "test": `attack.apply_test`), called
  with their positions in `source`.

  Attributes:
    source: where the pixels come from.
    positions: (N,) int64 indices into `source`, one per row.
    attack: the attack applied to the triggered rows (None: no row is triggered).
    triggered: (N,) bool, which rows get the attack.
    mode: "train" or "test" (which of the attack's two functions).
  """

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, source: ImageSource, positions: np.ndarray,
               attack: Optional[Attack] = None, triggered: Optional[np.ndarray] = None,
               mode: str = "train"):
    self.source = source
    self.positions = np.asarray(positions, np.int64)
    self.attack, self.mode = attack, mode
    self.triggered = (np.zeros(len(self.positions), bool) if triggered is None
                      else np.asarray(triggered, bool))
    side = source.image_size
    self.shape = (len(self.positions), side, side, 3)

  def __len__(self) -> int:
    return len(self.positions)

  def _read(self, rows: np.ndarray) -> np.ndarray:
    at = self.positions[rows]
    images = self.source.images(at)
    hit = np.flatnonzero(self.triggered[rows])
    if len(hit) and self.attack is not None:
      apply = self.attack.apply if self.mode == "train" else self.attack.apply_test
      images[hit] = apply(images[hit], at[hit])
    return images

  def __getitem__(self, key: _Index) -> np.ndarray:
    """The decoded (and, where triggered, attacked) uint8 images of `key`."""
    if isinstance(key, (int, np.integer)):
      return self._read(np.asarray([key]))[0]
    if isinstance(key, slice):
      return self._read(np.arange(len(self))[key])
    rows = np.asarray(key)
    if rows.dtype == bool:
      raise TypeError("index ImageRows with row numbers; use take(rows, mask) to keep "
                      "the rows of a mask")
    return self._read(rows.astype(np.int64))

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    """Every row, decoded: for small splits (and hashing a few rows)."""
    del copy
    out = self[:]
    return out if dtype is None else out.astype(dtype)

  def subset(self, rows: np.ndarray) -> "ImageRows":
    """The rows `rows` (row numbers), still read on demand."""
    rows = np.asarray(rows, np.int64)
    return ImageRows(self.source, self.positions[rows], self.attack, self.triggered[rows],
                     self.mode)


def is_lazy(a) -> bool:
  """Whether `a` is read on demand (an `ImageRows`) rather than held in memory."""
  return isinstance(a, ImageRows)


def take(a, mask: np.ndarray):
  """The rows of `a` where `mask` is True: `a[mask]` for arrays, a lazy subset for
  `ImageRows`."""
  if isinstance(a, ImageRows):
    return a.subset(np.flatnonzero(mask))
  return a[mask]


def train_rows(train: PoisonedTrainSet) -> ImageRows:
  """The poisoned training set, covers included, before augmentation (the
  on-demand `data.device.train_arrays(train).images`)."""
  return ImageRows(train.source, np.arange(len(train)), train.attack,
                   train.poisoned | train.covered, "train")


def clean_rows(source: ImageSource) -> ImageRows:
  """A clean split (the ACC set), read on demand."""
  return ImageRows(source, np.arange(len(source)))


def triggered_rows(test: TriggeredTestSet) -> ImageRows:
  """The ASR set, every image triggered (the on-demand
  `data.device.triggered_arrays(test).images`)."""
  return ImageRows(test.source, test.indices, test.attack,
                   np.ones(len(test.indices), bool), "test")
