"""Image sources (folder, TFDS without TensorFlow), pipelines, augmentation, preview."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vibe_jax import attacks
from vibe_jax.data import augment, pipeline, sources
from vibe_jax.data.poisoned import CleanSet, TriggeredTestSet, poison_train_set
from vibe_jax.errors import InputError, MissingFileError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _folder(root, size=32, per_class=6, classes=("cat", "dog", "emu"), fmt="png"):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in classes:
      (root / split / name).mkdir(parents=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{i:03d}.{fmt}")
  return root


def test_image_folder_source_reads_sorted_classes(tmp_path):
  root = _folder(tmp_path / "data")
  source = sources.open_source(str(root), "train")
  assert len(source) == 18 and source.num_classes == 3 and source.image_size == 32
  np.testing.assert_array_equal(source.labels, np.repeat([0, 1, 2], 6))
  image, label = source[7]
  want = np.asarray(Image.open(root / "train" / "dog" / "001.png"))
  np.testing.assert_array_equal(image, want)
  assert label == 1
  info = sources.dataset_info(str(root))
  assert info.small and info.test_split == "test" and info.image_size == 32


def test_large_image_folder_is_resized_to_224(tmp_path):
  root = _folder(tmp_path / "big", size=300, per_class=1, fmt="jpg")
  info = sources.dataset_info(str(root))
  assert not info.small and info.image_size == 224
  image, _ = sources.open_source(str(root), "test")[0]
  assert image.shape == (224, 224, 3) and image.dtype == np.uint8


def test_missing_data_names_the_problem(tmp_path):
  with pytest.raises(InputError, match="unknown dataset"):
    sources.dataset_info(str(tmp_path / "nothing"))
  _folder(tmp_path / "d")
  with pytest.raises(MissingFileError, match="does not exist"):
    sources.ImageFolderSource(tmp_path / "d", "validation")
  with pytest.raises(MissingFileError, match="tfds build cifar10 .*array_record"):
    sources.open_source("cifar10", "train", data_dir=str(tmp_path / "tfds"))


def test_tfds_source_reads_through_data_source_without_tensorflow():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  records = [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": i % 10}
             for i in range(12)]
  # JPEG bytes, as SkipDecoding returns them from real ArrayRecord files.
  buffer = __import__("io").BytesIO()
  Image.fromarray(records[3]["image"]).save(buffer, format="PNG")
  records[3] = {"image": buffer.getvalue(), "label": 3}

  def fake_source(builder, split, decoders=None, **kwargs):
    del builder, kwargs
    assert "image" in decoders and split == "train"
    return records

  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    source = sources.open_source("cifar10", "train")
  assert len(source) == 12 and source.num_classes == 10 and source.image_size == 32
  np.testing.assert_array_equal(source.labels, np.arange(12) % 10)
  image, label = source[3]
  assert image.shape == (32, 32, 3) and label == 3
  assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None


@pytest.mark.parametrize("attack", attacks.names())
def test_train_pipeline_is_a_function_of_seed_and_step(attack):
  rng = np.random.default_rng(0)
  source = sources.ArraySource(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                               np.arange(40) % 4)
  info = sources.DATASETS["cifar10"]
  params = dict(num_classes=4, rate=0.25, seed=5)
  train = poison_train_set(source, attacks.build(attack, **params))
  a = pipeline.train_pipeline(train, info, batch_size=8, seed=1)
  # A second, independent instance: new source, attack and pipeline objects.
  again = sources.ArraySource(source.images(range(40)).copy(), np.arange(40) % 4)
  b = pipeline.train_pipeline(poison_train_set(again, attacks.build(attack, **params)),
                              info, batch_size=8, seed=1)
  for step in (0, 4, 7):  # 7 is in the second epoch
    for key in ("image", "label", "index", "poisoned", "true_label"):
      np.testing.assert_array_equal(a[step][key], b[step][key])
  batch = a[0]
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  # One epoch visits every index once.
  seen = np.concatenate([a[s]["index"] for s in range(5)])
  assert sorted(seen.tolist()) == list(range(40))
  c = pipeline.train_pipeline(train, info, batch_size=8, seed=2)
  assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_eval_pipeline_keeps_order_and_normalises():
  images = np.full((5, 32, 32, 3), 255, np.uint8)
  source = sources.ArraySource(images, np.arange(5))
  info = sources.DATASETS["cifar10"]
  batches = list(pipeline.eval_pipeline(CleanSet(source), info, batch_size=2))
  assert [len(b["index"]) for b in batches] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), range(5))
  want = (1.0 - 0.4914) / 0.247
  np.testing.assert_allclose(batches[0]["image"][0, 0, 0, 0], want, rtol=1e-6)
  asr = TriggeredTestSet(source, attacks.build("blend", target=0, num_classes=5))
  assert len(list(pipeline.eval_pipeline(asr, info, batch_size=10))[0]["index"]) == 4


def test_augmentations_keep_shapes_and_content():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  out = augment.pad_crop_flip(image, np.random.default_rng(1))
  assert out.shape == (32, 32, 3)
  # Every output is a shifted (maybe flipped) window of the zero-padded image.
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  windows = [padded[t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
  assert any(np.array_equal(out, w) or np.array_equal(out, w[:, ::-1]) for w in windows)
  big = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
  assert augment.random_resized_crop_flip(big, rng).shape == (224, 224, 3)
  assert augment.resize_center_crop(big).shape == (224, 224, 3)


@pytest.mark.parametrize("attack", ["badnets", "wanet"])
def test_preview_writes_a_grid(tmp_path, attack):
  root = _folder(tmp_path / "data")
  out = tmp_path / "p.png"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "vibe_jax.attacks.preview",
                        f"--attack={attack}", f"--dataset={root}", f"--out={out}",
                        "--num=2"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  grid = np.asarray(Image.open(out))
  # Three rows (clean, poisoned, difference) of 2 tiles of 32 * 4 px plus gaps.
  assert grid.shape == (3 * (128 + 4), 2 * (128 + 4), 3)
  assert grid[132:264].tolist() != grid[:132].tolist()


def test_preview_names_an_unknown_attack(tmp_path):
  root = _folder(tmp_path / "data")
  run = subprocess.run([sys.executable, "-m", "vibe_jax.attacks.preview", "--attack=nope",
                        f"--dataset={root}", f"--out={tmp_path / 'p.png'}"], cwd=ROOT,
                       capture_output=True, text=True)
  assert run.returncode != 0 and "unknown attack 'nope'" in run.stderr


def test_lc_perturb_writes_the_cache_the_attack_reads(tmp_path):
  root = _folder(tmp_path / "data", per_class=8)
  out = tmp_path / "lc.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "vibe_jax.attacks.lc_perturb",
                        f"--dataset={root}", f"--out={out}", "--epochs=1",
                        "--batch_size=8", "--rate=0.5"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "misclassified after PGD" in run.stdout
  source = sources.open_source(str(root), "train")
  attack = attacks.build("lc", rate=0.5, perturbation_path=str(out))
  train = poison_train_set(source, attack)
  with np.load(out) as cache:
    np.testing.assert_array_equal(cache["indices"], np.flatnonzero(train.poisoned))
    i = int(cache["indices"][0])
    clean = source[i][0].astype(int)
    delta = np.abs(cache["images"][0].astype(int) - clean)
    assert delta.max() <= 17 and delta.max() > 0  # eps = 16/255, truncation adds 1
