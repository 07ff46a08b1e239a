"""BadNets (spec 11.3): a small patch pasted over the image.

Default trigger, generated here: the 2x2 multi-coloured patch of the reference's
`cifar_1.png` at rows 4-5, columns 4-5 of a 32x32 image, with the pixel values the
spec lists; for larger images the same patch scaled by image_size // 32 (for
224px: a 14x14 patch at rows and columns 28-41, which also survives the reference's
Resize(256)+CenterCrop(224) test transform, unlike its top-left apple logo, quirk
21). A user trigger image (`trigger_path`) replaces it; as in the reference, only
its non-zero channel values are pasted.
"""

import dataclasses
import functools
from typing import Optional

import numpy as np

from vibe_jax.attacks.base import Attack, load_trigger_image, register

__all__ = ["BadNets", "BadNetsAllToAll", "default_patch"]

# (row, column) -> (R, G, B) of the reference's cifar_1.png (spec 11.3).
_PATCH_32 = {(4, 4): (180, 249, 112), (4, 5): (155, 50, 126),
             (5, 4): (234, 82, 68), (5, 5): (187, 201, 219)}


def default_patch(image_size: int) -> np.ndarray:
  """The default (image_size, image_size, 3) uint8 trigger, zero outside the patch."""
  scale = max(1, image_size // 32)
  small = np.zeros((32, 32, 3), np.uint8)
  for (row, col), rgb in _PATCH_32.items():
    small[row, col] = rgb
  big = np.kron(small, np.ones((scale, scale, 1), np.uint8))
  out = np.zeros((image_size, image_size, 3), np.uint8)
  n = min(image_size, big.shape[0])
  out[:n, :n] = big[:n, :n]
  return out


@register("badnets")
@dataclasses.dataclass(frozen=True)
class BadNets(Attack):
  """All-to-one BadNets.

  Attributes:
    trigger_path: optional RGB image; its non-zero channel values are the trigger.
  """

  trigger_path: Optional[str] = None

  @functools.cached_property
  def trigger(self) -> np.ndarray:
    """(H, W, 3) uint8 trigger; zeros are transparent."""
    loaded = load_trigger_image(self.trigger_path, self.image_size)
    return default_patch(self.image_size) if loaded is None else loaded

  def apply(self, images, indices):
    self.check_images(images)
    mask = self.trigger != 0  # per channel, as the reference
    return np.where(mask[None], self.trigger[None], images)


@register("badnets_all2all")
@dataclasses.dataclass(frozen=True)
class BadNetsAllToAll(BadNets):
  """BadNets all-to-all: the same patch, label y -> (y + 1) mod K."""

  target: int = -1
