"""Self-supervised views: colour maths and blur."""

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from vibe_jax.data import ssl_augment
from vibe_jax.data.sources import DATASETS


def test_hsv_round_trip_matches_colorsys():
  x = np.random.default_rng(0).uniform(size=(64, 3)).astype(np.float32)
  h, s, v = ssl_augment._rgb_to_hsv(jnp.asarray(x))  # pylint: disable=protected-access
  want = np.array([colorsys.rgb_to_hsv(*p) for p in x])
  np.testing.assert_allclose(np.stack([h, s, v], 1), want, atol=1e-5)
  back = ssl_augment._hsv_to_rgb(h, s, v)  # pylint: disable=protected-access
  np.testing.assert_allclose(back, x, atol=1e-5)


def test_gaussian_blur_matches_scipy():
  x = np.random.default_rng(1).uniform(size=(40, 40, 3)).astype(np.float32)
  got = ssl_augment.gaussian_blur(jnp.asarray(x), jnp.float32(1.5))
  want = ndimage.gaussian_filter(x, sigma=(1.5, 1.5, 0), mode="mirror", truncate=11 / 1.5)
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_two_views_differ_and_are_normalised():
  images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
  v1, v2 = jax.jit(lambda k, x: ssl_augment.two_views(k, x, DATASETS["cifar10"]))(
      jax.random.PRNGKey(0), images)
  assert v1.shape == v2.shape == (4, 32, 32, 3)
  assert not np.allclose(v1, v2)
  big = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
  info = dataclasses.replace(DATASETS["imagenette"], image_size=48)  # blurred views
  w1, _ = ssl_augment.two_views(jax.random.PRNGKey(1), big, info)
  assert w1.shape == (2, 48, 48, 3) and np.all(np.isfinite(w1))
