"""torch-compatible bicubic resampling as matrices (NumPy), shared by WaNet's warp
field and ViT position-embedding resizing.

torch's bicubic (A = -0.75) reads 4 taps around each source coordinate, clamping tap
indices at the border. The source coordinate of output pixel i is
  align_corners=True:  i * (n_in - 1) / (n_out - 1)
  otherwise:           (i + 0.5) / scale - 0.5, scale = n_out / n_in unless given
(a caller passing `scale_factor` to torch.nn.functional.interpolate gets that scale).
"""

from typing import Optional

import numpy as np

__all__ = ["cubic_weights", "bicubic_matrix"]


def cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """torch's 4-tap cubic convolution weights for fractional offsets t, shape (..., 4)."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(size_in: int, size_out: int, *, align_corners: bool,
                   scale: Optional[float] = None) -> np.ndarray:
  """(size_out, size_in) matrix M with resized = M @ signal along one axis."""
  out = np.arange(size_out, dtype=np.float64)
  if align_corners:
    real = out * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
  else:
    real = (out + 0.5) / (scale if scale else size_out / size_in) - 0.5
  base = np.floor(real).astype(int)
  weights = cubic_weights(real - base)
  matrix = np.zeros((size_out, size_in))
  for tap in range(4):
    idx = np.clip(base - 1 + tap, 0, size_in - 1)
    np.add.at(matrix, (np.arange(size_out), idx), weights[:, tap])
  return matrix
