"""Every config loads; every experiment of the grid runs one step (runlocal) and
leaves what each of its stages must produce."""

import importlib
import json
import math

import numpy as np
from PIL import Image
import pytest

from vibe_jax.config import grid
from vibe_jax.experiment import train_and_evaluate

GRID = [(d, a, v) for d, attacks in grid.ATTACKS.items() for a in attacks
        for v in grid.VARIANTS]


def _runs():
  """The grid experiments the slow test runs: CIFAR-10's every attack with both
  frozen-feature variants (seconds each) and with one self-supervised variant,
  alternating -A and -F (20-120 s each: the attack only changes the data, which the
  FM runs already take through the whole pipeline); for the other datasets, which
  share the CIFAR-10 code paths, each attack and each variant at least once (a
  diagonal). All to keep CI within its budget; `test_every_grid_config_loads`
  still builds every config of the grid."""
  attacks = grid.ATTACKS["cifar10"]
  ss = [v for v in grid.VARIANTS if v.startswith("ss")]
  runs = [("cifar10", a, v) for a in attacks for v in grid.VARIANTS if not v.startswith("ss")]
  runs += [("cifar10", a, ss[i % len(ss)]) for i, a in enumerate(attacks)]
  for dataset, attacks in grid.ATTACKS.items():
    if dataset != "cifar10":
      n = max(len(attacks), len(grid.VARIANTS))
      runs += [(dataset, attacks[i % len(attacks)], grid.VARIANTS[i % len(grid.VARIANTS)])
               for i in range(n)]
  return runs


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  rng = np.random.default_rng(0)
  for split, n in (("train", 32), ("test", 16)):
    for c in range(2):
      (root / split / f"c{c}").mkdir(parents=True)
      for i in range(n):
        pixels = np.clip(rng.normal(90 + 80 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
  return root


@pytest.mark.parametrize("name", ["quickstart", "vibe_a_features", "vibe_f_features",
                                  "cifar10_cpu"])
def test_feature_configs_load(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.model.variant in ("A", "F") and config.defenses == "none,vibe"


def test_grid_has_the_papers_cifar10_experiments():
  assert len([g for g in GRID if g[0] == "cifar10"]) == 8 * 4
  config = importlib.import_module("configs.cifar10").get_config("attack=wanet,variant=fm_a")
  assert config.optim.frozen.eta and config.model.frozen_features
  assert config.model.backbone == "dinov2_vitg14" and config.model.input_size == 224
  config = importlib.import_module("configs.cifar10").get_config("attack=lc,variant=ss_f")
  assert config.ssl.enabled and config.leiden.enabled and config.num_steps == 30_000
  assert config.optim.lr.backbone == 1e-3 and config.estep.period == 1000
  assert importlib.import_module("configs.cifar10").get_config(
      "variant=ss_a,runlocal=0").data.train_subset == 0
  with pytest.raises(ValueError, match="not in the cifar100 grid"):
    importlib.import_module("configs.cifar100").get_config("attack=lc")


@pytest.mark.parametrize("dataset,attack,variant", GRID)
def test_every_grid_config_loads(dataset, attack, variant):
  config = importlib.import_module(f"configs.{dataset}").get_config(
      f"attack={attack},variant={variant}")
  assert config.data.attack == attack
  assert config.data.dataset == {"imagenet1k": "imagenet2012"}.get(dataset, dataset)
  assert config.ssl.enabled == variant.startswith("ss")
  assert config.model.variant == variant[-1].upper()


def test_the_slow_grid_covers_every_attack_and_variant_of_each_dataset():
  runs = _runs()
  for dataset, attacks in grid.ATTACKS.items():
    assert {a for d, a, _ in runs if d == dataset} == set(attacks)
    assert {v for d, _, v in runs if d == dataset} == set(grid.VARIANTS)


def _grouped(runs):
  """`runs` as pytest params, a dataset's self-supervised runs in one xdist group:
  run one after the other on one worker, all but the first load their compiled
  SSL steps from the session's cache instead of compiling them side by side (two
  concurrent first runs took 148 s each on 2 cores)."""
  return [pytest.param(d, a, v, marks=pytest.mark.xdist_group(f"grid-ss-{d}"))
          if v.startswith("ss") else (d, a, v) for d, a, v in runs]


@pytest.mark.slow
@pytest.mark.parametrize("dataset,attack,variant", _grouped(_runs()))
def test_every_grid_experiment_runs_one_step(tmp_path, tiny_folder, dataset, attack, variant):
  config = importlib.import_module(f"configs.{dataset}").get_config(
      f"attack={attack},variant={variant},runlocal=1")
  config.data.dataset = str(tiny_folder)  # instead of the TFDS dataset
  config.num_steps = 1
  results = train_and_evaluate(config, str(tmp_path))
  rows = results["rows"]
  assert [r["method"] for r in rows] == ["no defense", f"VIBE-{variant[-1].upper()}"]
  assert all(math.isfinite(r[k]) and 0.0 <= r[k] <= 1.0 for r in rows
             for k in ("clean_acc", "asr"))
  assert results["config"] == json.loads((tmp_path / "config.json").read_text())
  poisoning = json.loads((tmp_path / "poisoning.json").read_text())
  assert poisoning["attack"] == attack
  for stage in ("baseline", "vibe"):
    assert (tmp_path / stage / "checkpoints" / "1").is_dir(), stage
  labels = np.load(tmp_path / "pseudo_labels.npy")
  assert len(labels) == results["stages"]["vibe"]["em"]["training_examples"]
  if variant.startswith("ss"):
    assert (tmp_path / "ssl" / "checkpoints" / "1").is_dir()
    assert (tmp_path / "ssl" / "backbone.msgpack").stat().st_size > 0
    kept = json.loads((tmp_path / "leiden.json").read_text())["kept_indices"]
    assert len(labels) == len(kept)
    assert not (tmp_path / "features.npz").exists()
  else:
    with np.load(tmp_path / "features.npz") as features:
      assert features["train_features"].shape == (64, 128)  # small_cnn on 64 images
    assert len(labels) == 64 and not (tmp_path / "ssl").exists()


def _imagenet_layout(root, classes: int, per_class: int, side: int = 72):
  """ROOT/train/<wnid>/<wnid>_<i>.JPEG and ROOT/val/<wnid>/..., as ImageNet ships."""
  rng = np.random.default_rng(1)
  for split, n in (("train", per_class), ("val", 1)):
    for c in range(classes):
      wnid = f"n{1440764 + 17 * c:08d}"
      (root / split / wnid).mkdir(parents=True)
      for i in range(n):
        pixels = np.clip(rng.normal(40 + 4 * c, 25, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG")
  return root


@pytest.mark.slow
def test_imagenet1k_runs_an_em_step_streaming_from_an_imagenet_layout_folder(tmp_path):
  root = _imagenet_layout(tmp_path / "imagenet", classes=40, per_class=2)
  config = importlib.import_module("configs.imagenet1k").get_config(
      "attack=badnets,variant=ss_f,runlocal=1")
  assert config.data.placement == "stream"
  config.data.dataset, config.data.train_subset, config.data.test_subset = str(root), 0, 0
  config.num_steps = 1
  results = train_and_evaluate(config, str(tmp_path / "run"))
  assert results["stages"]["data"] == {"train": 80, "test": 40, "asr": 39, "classes": 40,
                                       "poisoned": 8, "placement": "stream"}
  estep = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()
           if '"estep"' in line]
  assert len(estep) == 1 and estep[0]["step"] == 0
  assert (tmp_path / "run" / "vibe" / "checkpoints" / "1").is_dir()
  assert all(math.isfinite(r["clean_acc"]) for r in results["rows"])
