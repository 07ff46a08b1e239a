"""Label-consistent attack (Turner et al.; spec 11.8).

Clean-label: 25% of the target class (rate 0.25) keep their label, but their images
are first made hard to classify by an adversarial perturbation (untargeted L-inf
PGD against a benign model: eps 16/255, step 1.5/255, 30 steps, no random start,
inputs in [0, 1], truncated to uint8), then get the corner trigger: 3x3 black-and-
white patterns in the four corners (scaled by image_size // 32). Test images get the
trigger only.

The perturbation is an offline step (`python -m vibe_jax.tools.lc_perturb`) that
writes a cached poisoned set, an `.npz` with `indices` and `images`; pass its path
as `perturbation_path`. Without it the attack is the plain clean-label corner
trigger (the reference attacks a random network when its model is missing, quirk 22).
"""

import dataclasses
import functools
from typing import Optional

import numpy as np

from vibe_jax.attacks.base import Attack, register

__all__ = ["LabelConsistent", "corner_trigger"]

# White pixels of the 3x3 pattern in each corner (spec 11.8); the rest of each 3x3
# block is black.
_WHITE = {
    "top_left": ((0, 0), (1, 1), (2, 2), (2, 0)),
    "top_right": ((0, 2), (1, 1), (2, 0), (2, 2)),
    "bottom_left": ((0, 0), (1, 1), (2, 0), (2, 2)),
    "bottom_right": ((0, 2), (1, 1), (2, 0), (2, 2)),
}


def corner_trigger(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(values (H, W, 3) uint8, mask (H, W) bool) of the four-corner trigger."""
  scale = max(1, image_size // 32)
  values = np.zeros((image_size, image_size, 3), np.uint8)
  mask = np.zeros((image_size, image_size), bool)
  side = 3 * scale
  for corner, whites in _WHITE.items():
    block = np.zeros((3, 3), np.uint8)
    for r, c in whites:
      block[r, c] = 255
    block = np.kron(block, np.ones((scale, scale), np.uint8))
    top = 0 if corner.startswith("top") else image_size - side
    left = 0 if corner.endswith("left") else image_size - side
    values[top:top + side, left:left + side] = block[..., None]
    mask[top:top + side, left:left + side] = True
  return values, mask


@register("lc")
@dataclasses.dataclass(frozen=True)
class LabelConsistent(Attack):
  """Label-consistent attack.

  Attributes:
    perturbation_path: `.npz` from `lc_perturb` (indices, images), or None.
  """

  rate: float = 0.25
  perturbation_path: Optional[str] = None
  clean_label = True  # type: ignore[misc]  -- a ClassVar of Attack

  @functools.cached_property
  def trigger(self) -> tuple[np.ndarray, np.ndarray]:
    """(values, mask) of the corner trigger."""
    return corner_trigger(self.image_size)

  @functools.cached_property
  def perturbed(self) -> dict[int, np.ndarray]:
    """Training index -> adversarially perturbed uint8 image (empty without a cache)."""
    if not self.perturbation_path:
      return {}
    try:
      with np.load(self.perturbation_path) as cache:
        indices, images = cache["indices"], cache["images"]
    except FileNotFoundError as error:
      raise ValueError(f"lc perturbation cache {self.perturbation_path!r} does not "
                       "exist; create it with python -m vibe_jax.tools.lc_perturb"
                       ) from error
    if images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"lc perturbation cache holds {images.shape[1:]} images, the "
                       f"attack expects {self.image_size}px")
    return {int(i): image for i, image in zip(indices, images)}

  def validate_poisoned(self, poisoned: np.ndarray) -> None:
    """Raises ValueError if the cache lacks any of the `poisoned` indices."""
    if not self.perturbation_path:
      return
    missing = sorted(set(int(i) for i in poisoned) - set(self.perturbed))
    if missing:
      raise ValueError(f"lc perturbation cache {self.perturbation_path!r} lacks "
                       f"{len(missing)} poisoned indices (first: {missing[:5]}); it was "
                       "made for another seed, rate or target")

  def _stamp(self, images: np.ndarray) -> np.ndarray:
    values, mask = self.trigger
    return np.where(mask[None, ..., None], values[None], images)

  def apply(self, images, indices):
    self.check_images(images)
    perturbed = self.perturbed
    if perturbed:
      images = np.stack([perturbed.get(int(i), image) for i, image in zip(indices, images)])
    return self._stamp(images)

  def apply_test(self, images, indices):
    self.check_images(images)
    return self._stamp(images)
