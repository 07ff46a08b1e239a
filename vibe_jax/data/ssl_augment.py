"""Self-supervised views in jit: the asymmetric augmentations of spec 8.2.

Both views: RandomResizedCrop (scale 0.08-1), colour jitter with probability 0.8
(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), grayscale with probability
0.2, horizontal flip; the second view is also solarised with probability 0.2. For
ImageNet-size images, Gaussian blur (sigma uniform in 0.1-2, as PIL's radius) with
probability 1.0 (first view) and 0.1 (second); CIFAR views are not blurred.
Deviation: torchvision applies the four jitters in a random order, here always
brightness, contrast, saturation, hue.
"""

import jax
import jax.numpy as jnp

from vibe_jax.data.device import normalize, random_resized_crop_flip
from vibe_jax.data.sources import DatasetInfo

__all__ = ["two_views", "gaussian_blur"]


def _grey(x):
  return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _rgb_to_hsv(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.max(x, axis=-1)
  c = v - jnp.min(x, axis=-1)
  s = jnp.where(v > 0, c / jnp.maximum(v, 1e-8), 0.0)
  safe = jnp.maximum(c, 1e-8)
  h = jnp.where(v == r, (g - b) / safe, jnp.where(v == g, 2.0 + (b - r) / safe,
                                                  4.0 + (r - g) / safe))
  h = jnp.where(c > 0, (h / 6.0) % 1.0, 0.0)
  return h, s, v


def _hsv_to_rgb(h, s, v):
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(jnp.int32) % 6
  r = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [v, q, p, p, t], v)
  g = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [t, v, v, q, p], p)
  b = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [p, p, t, v, v], q)
  return jnp.stack([r, g, b], axis=-1)


def _jitter(key, x):
  """Colour jitter of one float image in [0, 1]."""
  kb, kc, ks, kh = jax.random.split(key, 4)
  x = jnp.clip(x * jax.random.uniform(kb, (), minval=0.6, maxval=1.4), 0, 1)
  mean = jnp.mean(_grey(x))
  x = jnp.clip(mean + (x - mean) * jax.random.uniform(kc, (), minval=0.6, maxval=1.4), 0, 1)
  grey = _grey(x)
  x = jnp.clip(grey + (x - grey) * jax.random.uniform(ks, (), minval=0.8, maxval=1.2), 0, 1)
  h, s, v = _rgb_to_hsv(x)
  h = (h + jax.random.uniform(kh, (), minval=-0.1, maxval=0.1)) % 1.0
  return _hsv_to_rgb(h, s, v)


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int = 11) -> jax.Array:
  """Separable Gaussian blur of one (H, W, C) image with a traced sigma, reflecting
  at the borders."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  w = jnp.exp(-0.5 * (taps / sigma) ** 2)
  w = w / w.sum()
  h, wd = x.shape[0], x.shape[1]
  padded = jnp.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  rows = sum(w[i] * padded[i:i + h] for i in range(2 * radius + 1))
  return sum(w[i] * rows[:, i:i + wd] for i in range(2 * radius + 1))


def _view(key, image, size, solarize_p, blur_p):
  """One augmented view of one uint8 image, as float in [0, 1]."""
  k_crop, k_jit, k_pj, k_grey, k_sol, k_blur, k_sigma = jax.random.split(key, 7)
  x = random_resized_crop_flip(k_crop, image.astype(jnp.float32), size) / 255.0
  x = jnp.clip(x, 0, 1)
  x = jnp.where(jax.random.bernoulli(k_pj, 0.8), _jitter(k_jit, x), x)
  x = jnp.where(jax.random.bernoulli(k_grey, 0.2), jnp.broadcast_to(_grey(x), x.shape), x)
  if blur_p:
    sigma = jax.random.uniform(k_sigma, (), minval=0.1, maxval=2.0)
    x = jnp.where(jax.random.bernoulli(k_blur, blur_p), gaussian_blur(x, sigma), x)
  return jnp.where(jax.random.bernoulli(k_sol, solarize_p), jnp.where(x >= 0.5, 1 - x, x), x)


def two_views(key: jax.Array, images: jax.Array, info: DatasetInfo
              ) -> tuple[jax.Array, jax.Array]:
  """Two normalised views (B, S, S, 3) of a uint8 batch."""
  k1, k2 = jax.random.split(key)
  size = info.image_size
  out = []
  blur = (0.0, 0.0) if info.small else (1.0, 0.1)
  for k, solarize, blur_p in ((k1, 0.0, blur[0]), (k2, 0.2, blur[1])):
    keys = jax.random.split(k, images.shape[0])
    views = jax.vmap(lambda kk, im: _view(kk, im, size, solarize, blur_p))(keys, images)
    out.append(normalize(views * 255.0, info))
  return out[0], out[1]
