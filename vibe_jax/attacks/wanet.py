"""WaNet (spec 11.5): a smooth, fixed warp of the image.

The field: U(-1, 1) control points of shape (2, k, k), divided by their mean
absolute value, upsampled bicubically (align_corners, torch's a = -0.75) to H x H,
added as s * field / H to the identity sampling grid, clamped to [-1, 1]; images are
resampled bilinearly (align_corners, zero padding) and truncated to uint8. k = 4
for 32px images; the reference uses k = 224 (an unsmoothed per-pixel field) for
224px ones.

Deviation from the reference (quirk 5): one field per seed, shared by training and
test, as WaNet intends. `independent_fields=True` restores the reference's
behaviour of a different field for every dataset object: `for_role(role)` then
draws the field from (seed, role).
"""

import dataclasses
import functools
import zlib

import numpy as np

from vibe_jax.attacks.base import Attack, register
from vibe_jax.resize import bicubic_matrix

__all__ = ["WaNet"]


@register("wanet")
@dataclasses.dataclass(frozen=True)
class WaNet(Attack):
  """All-to-one WaNet.

  Attributes:
    k: control-point grid side; 0 picks the reference's: 4 for images up to 64px,
      the image size (an unsmoothed per-pixel field) above.
    s: warp strength.
    independent_fields: the reference's separate field per dataset object.
    role: which dataset object this is ("" unless `independent_fields`).
  """

  k: int = 0
  s: float = 1.0
  independent_fields: bool = False
  role: str = ""

  def for_role(self, role: str) -> "WaNet":
    """This attack as seen by one dataset object (matters with independent_fields)."""
    return dataclasses.replace(self, role=role) if self.independent_fields else self

  @functools.cached_property
  def grid(self) -> np.ndarray:
    """(H, W, 2) sampling grid in [-1, 1], last axis (x, y) as torch's grid_sample."""
    h = self.image_size
    salt = zlib.crc32(self.role.encode()) if self.independent_fields else 0
    rng = np.random.default_rng((self.seed, 0x3A7E7, salt))
    k = self.k or (4 if h <= 64 else h)
    ins = rng.uniform(-1.0, 1.0, (2, k, k))
    ins = ins / np.mean(np.abs(ins))
    up = bicubic_matrix(k, h, align_corners=True)
    noise = np.einsum("hk,ckl,wl->hwc", up, ins, up)  # (H, W, 2)
    axis = np.linspace(-1.0, 1.0, h)
    identity = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)  # (x, y)
    return np.clip(identity + self.s * noise / h, -1.0, 1.0)

  @functools.cached_property
  def _taps(self):
    """Flat source indices (4, H*W) and bilinear weights (4, H*W), 0 outside."""
    h = w = self.image_size
    ix = (self.grid[..., 0] + 1) / 2 * (w - 1)
    iy = (self.grid[..., 1] + 1) / 2 * (h - 1)
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    fx, fy = ix - x0, iy - y0
    indices, weights = [], []
    for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                       (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
      yy, xx = y0 + dy, x0 + dx
      inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
      indices.append((np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)).ravel())
      weights.append(np.where(inside, wt, 0.0).ravel())
    return np.stack(indices), np.stack(weights).astype(np.float32)

  def apply(self, images, indices):
    self.check_images(images)
    b, h, w, c = images.shape
    flat = images.reshape(b, h * w, c).astype(np.float32)
    taps, weights = self._taps
    warped = np.einsum("tp,btpc->bpc", weights, flat[:, taps])
    return np.clip(warped, 0, 255).astype(np.uint8).reshape(b, h, w, c)
