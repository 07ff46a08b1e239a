"""Attacks: determinism across instances and contexts, counts, relabelling, pixels."""

import numpy as np
import pytest
from scipy import fft

from vibe_jax import attacks
from vibe_jax.attacks.ftrojan import rgb_to_ycrcb
from vibe_jax.data.poisoned import PoisonedTrainSet, TriggeredTestSet, poison_train_set
from vibe_jax.data.sources import ArraySource


ALL = attacks.names()


def _source(n=200, size=32, k=10, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return ArraySource(images, np.arange(n) % k, num_classes=k)


def test_registry_lists_the_paper_attacks_and_names_unknown_ones():
  assert {"badnets", "badnets_all2all", "blend", "wanet", "ftrojan"} <= set(ALL)
  with pytest.raises(ValueError, match="unknown attack 'nope'.*badnets"):
    attacks.build("nope")
  with pytest.raises(ValueError, match="no parameter"):
    attacks.build("blend", alpah=0.2)


@pytest.mark.parametrize("name", ALL)
def test_two_instances_with_one_seed_poison_identically(name):
  source = _source()
  a = poison_train_set(source, attacks.build(name, seed=3))
  b = poison_train_set(_source(), attacks.build(name, seed=3))
  np.testing.assert_array_equal(a.poisoned, b.poisoned)
  np.testing.assert_array_equal(a.given_labels, b.given_labels)
  for i in np.flatnonzero(a.poisoned)[:5]:
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
  other = poison_train_set(source, attacks.build(name, seed=4))
  assert not np.array_equal(a.poisoned, other.poisoned)


@pytest.mark.parametrize("name", ALL)
def test_training_and_test_triggers_are_identical(name):
  source = _source()
  attack = attacks.build(name, seed=1)
  train = poison_train_set(source, attack)
  plain = train.with_role("train_plain")  # the E-step's un-augmented view
  test = TriggeredTestSet(source, attack)
  for i in np.flatnonzero(train.poisoned)[:5]:
    np.testing.assert_array_equal(train[i]["image"], plain[i]["image"])
    # The batch call equals the per-example call.
    batch = attack.apply(source.images([i]), np.asarray([i]))[0]
    np.testing.assert_array_equal(train[i]["image"], batch)
  for j in range(0, len(test), 37):
    i = test.indices[j]
    want = attack.apply_test(source.images([i]), np.asarray([i]))[0]
    np.testing.assert_array_equal(test[j]["image"], want)
    if not name.startswith("adap_"):  # the adaptive attacks test a stronger trigger
      np.testing.assert_array_equal(
          test[j]["image"], attack.apply(source.images([i]), np.asarray([i]))[0])


@pytest.mark.parametrize("name", ALL)
def test_poisoned_count_labels_and_asr_set(name):
  source = _source(n=300)
  attack = attacks.build(name, seed=0, rate=0.1)
  train = poison_train_set(source, attack)
  test = TriggeredTestSet(source, attack)
  untouched = ~train.poisoned
  np.testing.assert_array_equal(train.given_labels[untouched], source.labels[untouched])
  if attack.clean_label:  # lc: a share of the target class, labels unchanged
    assert train.poisoned.sum() == int(0.1 * np.sum(source.labels == attack.target))
    assert np.all(source.labels[train.poisoned] == attack.target)
    np.testing.assert_array_equal(train.given_labels, source.labels)
    assert not np.any(source.labels[test.indices] == attack.target)
    assert np.all(test.labels == attack.target)
    return
  assert train.poisoned.sum() == int(0.1 * 300)
  if attack.target >= 0:
    assert np.all(train.given_labels[train.poisoned] == attack.target)
    assert np.all(source.labels[train.poisoned] != attack.target)
    assert not np.any(source.labels[test.indices] == attack.target)
    assert len(test) == np.sum(source.labels != attack.target)
    assert np.all(test.labels == attack.target)
  else:  # all-to-all
    np.testing.assert_array_equal(train.given_labels[train.poisoned],
                                  (source.labels[train.poisoned] + 1) % 10)
    assert len(test) == len(source)
    np.testing.assert_array_equal(test.labels, (source.labels + 1) % 10)
  # The example dict carries everything the EM loop needs.
  i = int(np.flatnonzero(train.poisoned)[0])
  example = train[i]
  assert example["index"] == i and example["poisoned"]
  assert example["true_label"] == source.labels[i]
  assert example["label"] == train.given_labels[i]


def test_badnets_pixels_are_the_reference_patch():
  images = np.zeros((1, 32, 32, 3), np.uint8)
  out = attacks.build("badnets").apply(images, np.zeros(1))[0]
  assert tuple(out[4, 4]) == (180, 249, 112) and tuple(out[4, 5]) == (155, 50, 126)
  assert tuple(out[5, 4]) == (234, 82, 68) and tuple(out[5, 5]) == (187, 201, 219)
  out[4:6, 4:6] = 0
  assert not out.any()  # nothing else changed
  big = attacks.build("badnets", image_size=224).apply(
      np.zeros((1, 224, 224, 3), np.uint8), np.zeros(1))[0]
  assert tuple(big[28, 28]) == (180, 249, 112) and tuple(big[41, 41]) == (187, 201, 219)
  assert np.count_nonzero(big.any(axis=2)) == 14 * 14


def test_badnets_user_trigger_pastes_only_non_zero_channels(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  trigger = np.zeros((32, 32, 3), np.uint8)
  trigger[0, 0] = (255, 0, 7)
  Image.fromarray(trigger).save(tmp_path / "t.png")
  images = np.full((1, 32, 32, 3), 100, np.uint8)
  out = attacks.build("badnets", trigger_path=str(tmp_path / "t.png")).apply(
      images, np.zeros(1))[0]
  assert tuple(out[0, 0]) == (255, 100, 7)
  assert np.all(out[1:] == 100)


def test_blend_is_the_reference_formula():
  attack = attacks.build("blend", seed=0)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  out = attack.apply(images, np.arange(2))
  x, t = images[0, 3, 5].astype(np.float32) / 255, attack.trigger[3, 5] / 255
  want = (255 * (0.9 * x + 0.1 * t.astype(np.float32))).astype(np.uint8)
  np.testing.assert_array_equal(out[0, 3, 5], want)
  assert np.all(attack.trigger[..., 0] == attack.trigger[..., 1])  # grey noise
  assert attack.trigger.max() <= 254


def test_wanet_field_moves_pixels_by_about_one_pixel():
  attack = attacks.build("wanet", seed=0)
  axis = np.linspace(-1, 1, 32)
  identity = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)
  shift_px = np.abs(attack.grid - identity) * 31 / 2
  assert 0.3 < shift_px.max() < 1.5
  still = attacks.build("wanet", s=0.0)
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(still.apply(images, np.arange(2)), images)
  # The reference's quirk: a field per dataset object when switched on.
  quirk = attacks.build("wanet", independent_fields=True)
  assert not np.allclose(quirk.for_role("train").grid, quirk.for_role("test").grid)
  assert attack.for_role("train").grid is attack.grid or np.array_equal(
      attack.for_role("train").grid, attack.for_role("test").grid)


def test_ftrojan_bumps_the_chosen_dct_coefficients():
  attack = attacks.build("ftrojan")
  smooth = np.full((1, 32, 32, 3), 120, np.uint8)
  out = attack.apply(smooth, np.zeros(1))
  before = fft.dctn(rgb_to_ycrcb(smooth[0].astype(float)), norm="ortho", axes=(0, 1))
  after = fft.dctn(rgb_to_ycrcb(out[0].astype(float)), norm="ortho", axes=(0, 1))
  delta = after - before
  for channel in (1, 2):
    assert abs(delta[31, 31, channel] - 50) < 3  # rounding to uint8 costs a little
  delta[31, 31, 1:] = 0
  assert np.abs(delta).max() < 3
  assert 0 < np.abs(out.astype(int) - smooth).max() <= 8  # a few levels of 255


def test_wrong_image_shape_is_named():
  with pytest.raises(ValueError, match=r"expects uint8 images of shape \(B, 32, 32, 3\)"):
    attacks.build("blend").apply(np.zeros((1, 28, 28, 3), np.uint8), np.zeros(1))
  assert isinstance(poison_train_set(_source(n=20), attacks.build("badnets")),
                    PoisonedTrainSet)


def test_adaptive_attacks_add_cover_samples_and_vary_the_trigger():
  source = _source(n=400)
  for name in ("adap_blend", "adap_patch"):
    attack = attacks.build(name, seed=0)
    train = poison_train_set(source, attack)
    assert train.poisoned.sum() == 4 and train.covered.sum() == 4
    assert not np.any(train.poisoned & train.covered)
    covers = np.flatnonzero(train.covered)
    np.testing.assert_array_equal(train.given_labels[covers], source.labels[covers])
    i = covers[0]
    assert not np.array_equal(train[i]["image"], source[i][0])  # covers are triggered
    assert train.metadata()["cover_indices"] == covers.tolist()
  blend = attacks.build("adap_blend")
  masks = [blend.piece_mask(i) for i in range(6)]
  assert all(m.mean() == 0.5 for m in masks)  # half of the 16 pieces hidden
  assert len({m.tobytes() for m in masks}) > 1
  patch = attacks.build("adap_patch")
  assert len({patch.patch_of(i) for i in range(40)}) == 4
  zeros = np.zeros((1, 32, 32, 3), np.uint8)
  full = patch.apply_test(zeros, np.zeros(1))[0]
  for j in (0, 2):
    mark, mask = patch.patches[j]
    np.testing.assert_array_equal(full[mask > 0], mark[mask > 0])  # opacity 1


def test_lc_corner_pattern_and_perturbation_cache(tmp_path):
  attack = attacks.build("lc")
  out = attack.apply_test(np.full((1, 32, 32, 3), 128, np.uint8), np.zeros(1))[0]
  np.testing.assert_array_equal(out[:3, :3, 0] // 255, [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
  np.testing.assert_array_equal(out[:3, -3:, 1] // 255, [[0, 0, 1], [0, 1, 0], [1, 0, 1]])
  np.testing.assert_array_equal(out[-3:, -3:, 2] // 255, [[0, 0, 1], [0, 1, 0], [1, 0, 1]])
  assert np.all(out[3:-3, 3:-3] == 128) and np.all(out[:3, 3:-3] == 128)

  source = _source(n=100)
  chosen = poison_train_set(source, attack).poisoned
  idx = np.flatnonzero(chosen)
  perturbed = np.full((len(idx), 32, 32, 3), 7, np.uint8)
  np.savez(tmp_path / "c.npz", indices=idx, images=perturbed)
  with_cache = attacks.build("lc", perturbation_path=str(tmp_path / "c.npz"))
  train = poison_train_set(source, with_cache)
  image = train[idx[0]]["image"]
  assert np.all(image[5:-5, 5:-5] == 7)  # the perturbed image, then the trigger
  np.testing.assert_array_equal(image[:3, :3, 0] // 255, [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
  test = TriggeredTestSet(source, with_cache)
  assert not np.all(test[0]["image"][5:-5, 5:-5] == 7)  # test images are not perturbed
  np.savez(tmp_path / "short.npz", indices=idx[:-1], images=perturbed[:-1])
  with pytest.raises(ValueError, match="lacks 1 poisoned indices"):
    poison_train_set(source, attacks.build("lc", perturbation_path=str(tmp_path / "short.npz")))
