"""The RAB / Cert-SSB triggers: the reference's pixels, amounts and norms."""

import numpy as np
import pytest

from vibe_jax import attacks

RAB = ("rab_onepixel", "rab_fourpixel", "rab_blending")


def _grey(value, n=2, size=32):
  return np.full((n, size, size, 3), value, np.uint8)


def _changed(before, after):
  """The (row, col) of the pixels where any channel of the first image changed."""
  return {tuple(p) for p in np.argwhere((before[0] != after[0]).any(axis=-1))}


def test_rab_attacks_are_registered_with_the_reference_defaults():
  assert set(RAB) <= set(attacks.names())
  for name in RAB:
    attack = attacks.build(name)
    assert attack.rate == 0.02 and attack.target == 0 and attack.delta == 1.0


@pytest.mark.parametrize("name", RAB)
def test_same_seed_same_pixels(name):
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  a = attacks.build(name, seed=7).apply(images, np.arange(3))
  b = attacks.build(name, seed=7).apply(images.copy(), np.arange(3))
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.uint8 and a.shape == images.shape


def test_one_pixel_adds_delta_over_sqrt3_at_15_15():
  images = _grey(100)
  out = attacks.build("rab_onepixel").apply(images, np.arange(2))
  assert _changed(images, out) == {(15, 15)}
  # 100 + 255 / sqrt(3) = 247.2 -> 247 in every channel.
  assert np.all(out[:, 15, 15] == 247)
  bright = attacks.build("rab_onepixel").apply(_grey(200), np.arange(2))
  assert np.all(bright[:, 15, 15] == 255)  # min(x + delta / sqrt(3), 1)


def test_four_pixel_adds_delta_over_sqrt12_at_the_reference_pixels():
  images = _grey(100)
  out = attacks.build("rab_fourpixel").apply(images, np.arange(2))
  pixels = {(14, 16), (15, 15), (16, 14), (16, 16)}
  assert _changed(images, out) == pixels
  for r, c in pixels:  # 100 + 255 / sqrt(12) = 173.6 -> 174
    assert np.all(out[:, r, c] == 174)
  bright = attacks.build("rab_fourpixel").apply(_grey(230), np.arange(2))
  assert all(np.all(bright[:, r, c] == 255) for r, c in pixels)


def test_pixel_position_scales_with_the_image_and_can_be_moved():
  small = _grey(100, size=8)
  out = attacks.build("rab_onepixel", image_size=8).apply(small, np.arange(2))
  assert _changed(small, out) == {(3, 3)}  # 8 // 2 - 1
  out = attacks.build("rab_fourpixel", image_size=8).apply(small, np.arange(2))
  assert _changed(small, out) == {(2, 4), (3, 3), (4, 2), (4, 4)}
  images = _grey(100)
  out = attacks.build("rab_onepixel", row=2, col=30).apply(images, np.arange(2))
  assert _changed(images, out) == {(2, 30)}
  with pytest.raises(ValueError, match="rab_fourpixel.*outside"):
    attacks.build("rab_fourpixel", row=31)


def test_blending_has_l2_norm_delta_and_depends_on_the_seed():
  images = _grey(128)
  for delta in (1.0, 2.0):
    out = attacks.build("rab_blending", delta=delta).apply(images, np.arange(2))
    assert 0 < out.min() and out.max() < 255  # nothing clipped here
    norm = np.linalg.norm((out[0].astype(np.float64) - images[0]) / 255.0)
    assert abs(norm - delta) < 0.05 * delta
  a = attacks.build("rab_blending", seed=0)
  b = attacks.build("rab_blending", seed=1)
  assert not np.allclose(a.pattern, b.pattern)
  assert np.isclose(np.linalg.norm(a.pattern), 1.0, rtol=1e-5)
  assert not np.array_equal(a.apply(images, np.arange(2)), b.apply(images, np.arange(2)))


@pytest.mark.parametrize("name", RAB)
def test_wrong_image_shape_names_the_attack(name):
  with pytest.raises(ValueError, match=f"{name}.*expects uint8 images"):
    attacks.build(name).apply(np.zeros((1, 28, 28, 3), np.uint8), np.zeros(1))


@pytest.mark.parametrize("name", RAB)
def test_negative_delta_is_refused(name):
  with pytest.raises(ValueError, match=f"{name}.*delta"):
    attacks.build(name, delta=-0.5)
