"""The attack interface and the registry.

An attack is a frozen dataclass: its fields are the attack's parameters, and
`apply(images, indices)` is a pure, deterministic function of (pixels, example
indices, seed, parameters). Everything random about an attack (a warp field, a
noise trigger) is drawn from `seed` when the attack is built, so every place that
reads the data (training pipeline, E-step feature pass, test set) gets the same
pixels.

Images are uint8 arrays (B, H, W, 3) in NumPy, as decoded from disk; poisoning
happens before augmentation and normalisation, as in the reference (spec 10.2).
"""

import dataclasses
import math
import typing
from typing import ClassVar, Optional

import numpy as np
from PIL import Image

from vibe_jax.registry import Registry

__all__ = ["Attack", "register", "build", "names"]

@dataclasses.dataclass(frozen=True)
class Attack:
  """Base class of all attacks.

  Attributes:
    image_size: side of the (square) images the attack is built for.
    seed: seeds everything random about the attack (and the poisoned index set).
    target: target class of an all-to-one attack; -1 for all-to-all.
    rate: share of the training set to poison (of the target class when
      `clean_label`).
    num_classes: K, for all-to-all relabelling (y + 1) mod K.
    cover_rate: share of the training set triggered but left with its true label
      ("cover" samples of the adaptive attacks; 0 for the others).
  """

  image_size: int = 32
  seed: int = 0
  target: int = 0
  rate: float = 0.1
  num_classes: int = 10
  cover_rate: float = 0.0

  name: ClassVar[str] = ""
  clean_label: ClassVar[bool] = False

  def __post_init__(self):
    """Checks every parameter's type (from its annotation) and the ranges of the
    common ones, so a bad value stops with its name instead of failing later."""
    hints = typing.get_type_hints(type(self))
    for f in dataclasses.fields(self):
      _check_type(self.name, f.name, getattr(self, f.name), hints[f.name])
    shares = ("rate", "cover_rate", "alpha", "test_alpha", "mask_rate")
    for key in shares:
      value = getattr(self, key, None)
      if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"attack {self.name!r}: {key} must be in [0, 1], got {value}")
    if self.num_classes < 2:
      raise ValueError(f"attack {self.name!r}: num_classes must be >= 2, got "
                       f"{self.num_classes}")
    if not -1 <= self.target < self.num_classes:
      raise ValueError(f"attack {self.name!r}: target must be a class in [0, "
                       f"{self.num_classes}) or -1 (all-to-all), got {self.target}")
    if self.image_size < 1:
      raise ValueError(f"attack {self.name!r}: image_size must be >= 1, got "
                       f"{self.image_size}")

  def apply(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Returns the triggered copies of uint8 `images` (B, H, W, 3), as in training.

    `indices` are the examples' positions in their split; attacks whose trigger
    varies per example draw it from (seed, index).
    """
    raise NotImplementedError

  def apply_test(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The test-time trigger: the training one, except for the adaptive attacks."""
    return self.apply(images, indices)

  def validate_poisoned(self, poisoned: np.ndarray) -> None:
    """Checks that the attack can poison these indices (a cache may lack some)."""
    del poisoned

  def for_role(self, role: str) -> "Attack":
    """The attack as one dataset object ("train", "train_plain", "test") sees it.

    The same attack for every role, except where a reference quirk is switched on
    (WaNet's per-dataset fields).
    """
    del role
    return self

  def attack_labels(self, labels: np.ndarray) -> np.ndarray:
    """What the attacker wants triggered images classified as: the target, or
    (y + 1) mod K for all-to-all. The ASR test set's labels."""
    labels = np.asarray(labels)
    if self.target < 0:
      return ((labels + 1) % self.num_classes).astype(labels.dtype)
    return np.full_like(labels, self.target)

  def poison_labels(self, labels: np.ndarray) -> np.ndarray:
    """The labels poisoned training examples get: `attack_labels`, or their own
    labels for a clean-label attack."""
    labels = np.asarray(labels)
    return labels.copy() if self.clean_label else self.attack_labels(labels)

  def poison(self, images: np.ndarray, labels: np.ndarray,
             indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triggered images and their attack labels."""
    return self.apply(images, indices), self.poison_labels(labels)

  def check_images(self, images: np.ndarray) -> None:
    """Raises ValueError unless `images` is uint8 (B, image_size, image_size, 3)."""
    s = self.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
      raise ValueError(f"attack {self.name!r} expects uint8 images of shape "
                       f"(B, {s}, {s}, 3), got {images.dtype} {images.shape}")


def _check_type(attack: str, key: str, value, hint) -> None:
  """Raises ValueError unless `value` fits the simple annotation `hint`."""
  options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
  if value is None and type(None) in options:
    return
  ok = False
  for option in options:
    base = typing.get_origin(option) or option
    if base is bool:
      ok = ok or isinstance(value, bool)
    elif base is int:
      ok = ok or (isinstance(value, int) and not isinstance(value, bool))
    elif base is float:
      ok = ok or (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value))
    elif base in (str, tuple):
      ok = ok or isinstance(value, base)
    else:
      ok = True  # a type this check does not know: the attack checks it
  if not ok:
    want = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ValueError(f"attack {attack!r}: {key} must be {want}, got {value!r}")


_REGISTRY: Registry[Attack] = Registry("attack")
register = _REGISTRY.register
names = _REGISTRY.names
build = _REGISTRY.build


def load_trigger_image(path: Optional[str], size: int) -> Optional[np.ndarray]:
  """Reads an RGB trigger image from `path`, resized (bicubic) to size x size."""
  if not path:
    return None
  try:
    image = Image.open(path).convert("RGB")
  except FileNotFoundError as error:
    raise ValueError(f"trigger image {path!r} does not exist") from error
  if image.size != (size, size):
    image = image.resize((size, size), Image.BICUBIC)
  return np.asarray(image, np.uint8)
