"""The base config every experiment starts from.

It holds what every run shares (seed, data, model, optimizer groups, steps,
logging, checkpoints, which defenses and evaluators run); each registered defense
adds the sections it owns (`Defense.add_defaults`: `baseline` for no defense;
`estep`, `ssl`, `leiden` for VIBE). Config files in `configs/` call `base_config()`
and change what their experiment needs.
"""

import ml_collections

from vibe_jax import defenses
from vibe_jax import checks as ck
from vibe_jax.data.sources import parse_classes
from vibe_jax.errors import InputError
from vibe_jax.models.backbones import BACKBONES

__all__ = ["base_config", "check_base", "validate"]


def base_config() -> ml_collections.ConfigDict:
  """The reference's FM-style hyper-parameters on a feature matrix (spec 4, 5, 14)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.defenses = "none,vibe"  # run in this order, one result row each
  c.evaluators = "clean_acc,asr"  # the figures of each row (vibe_jax.train.evaluators)

  c.data = ml_collections.ConfigDict()
  c.data.source = "npz"  # "npz" (data.path), "digits" (quickstart) or "images"
  c.data.path = ""
  # source="images": a TFDS name, "sklearn_digits" or an image folder, poisoned by
  # data.attack.
  c.data.dataset = ""
  c.data.data_dir = ""  # TFDS data_dir ("" = TFDS's default)
  c.data.attack = "badnets"
  c.data.attack_params = ""  # "key=value,..." overriding the attack's defaults
  c.data.train_subset = 0  # > 0: a stratified subset of this many training images
  c.data.test_subset = 0
  # images: the source classes to keep, relabelled in this order ("2,0": 2 -> 0,
  # 0 -> 1), before the subsets; "" = every class.
  c.data.classes = ""
  c.data.poison_rate = 0.1  # digits only
  c.data.target = 0  # digits only
  c.data.patch = 2  # digits only: trigger side in pixels
  c.data.l2_normalize = False  # spec quirk 3: True = the reference's cached features
  c.data.num_classes = 0  # K; 0 = the dataset's declared classes (features: max label + 1)
  c.data.skip_bad_images = False  # True: skip images that fail to decode (else fatal)
  # images: "device" keeps the poisoned splits on the devices as uint8 (fastest for
  # CIFAR); "stream" reads, poisons and batches them on the host, step by step;
  # "auto" streams when they would take more than device_share of a device's memory.
  c.data.placement = "auto"
  c.data.device_share = 0.25
  c.data.prefetch = 4  # streamed batches read ahead by host threads

  c.model = ml_collections.ConfigDict()
  c.model.variant = "F"  # "A": p(y|l); "F": p(y|l,x)
  c.model.kappa = 10.0  # 10 CIFAR-10 / ImageNet-30, 20 CIFAR-100 / ImageNet-1k
  c.model.nu = 10.0
  c.model.prior_temperature = 0.02
  c.model.backbone = ""  # "" for feature vectors; a name from models/backbones.py
  c.model.backbone_weights = ""  # .msgpack from tools/convert.py ("" = random init)
  c.model.frozen_features = False  # FM: frozen backbone, features extracted once
  c.model.input_size = 0  # > 0: resize normalised images to this side (DINOv2 on CIFAR)
  # "dataset": the dataset's mean/std; "imagenet" / "inception" ([-1, 1]): what a
  # pretrained backbone's weights expect (EfficientNet-Lite: inception).
  c.model.input_norm = "dataset"
  # FM: where clean-image features are cached and shared between runs ("" = the
  # workdir's feature_cache/); point every run of a sweep at one directory.
  c.model.feature_cache = ""

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = ml_collections.ConfigDict(
      dict(backbone=1e-3, mu=1e-2, eta=1e-2, prior=0.1))
  c.optim.frozen = ml_collections.ConfigDict(
      dict(backbone=False, mu=False, eta=False, prior=False))
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4

  c.num_steps = 15_000
  c.batch_size = 1024
  # Rows per evaluation-mode pass (features, E-step features, evaluators), split over
  # a process's devices; it bounds the memory of those passes (activations).
  c.eval_batch_size = 256
  c.log_every = 250
  c.progress_bar = True
  # Steps per compiled call (a lax.scan over steps; results equal to float
  # tolerance). 0: auto, 1 when a backbone trains, else up to 250 (train/loop.py).
  c.steps_per_call = 0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000
  c.checkpoint.max_to_keep = 3

  for defense in defenses.defense_classes():
    defense.add_defaults(c)
  return c


def check_base(c: ml_collections.ConfigDict) -> list[str]:
  """The rules of the keys `base_config` sets (see `vibe_jax.checks`)."""
  p = []
  p += ck.integer(c, "seed", 0)
  p += ck.text(c, "defenses") + ck.text(c, "evaluators")
  p += ck.choice(c, "data.source", ("npz", "digits", "images"))
  for key in ("data.path", "data.dataset", "data.data_dir", "data.attack",
              "data.attack_params", "data.classes", "model.backbone",
              "model.backbone_weights"):
    p += ck.text(c, key)
  p += ck.integer(c, "data.train_subset", 0) + ck.integer(c, "data.test_subset", 0)
  p += ck.number(c, "data.poison_rate", 0.0, 1.0) + ck.integer(c, "data.target", 0)
  p += ck.integer(c, "data.patch", 1, 8)
  p += ck.boolean(c, "data.l2_normalize") + ck.boolean(c, "data.skip_bad_images")
  p += ck.integer(c, "data.num_classes", 0)
  p += ck.choice(c, "data.placement", ("auto", "device", "stream"))
  p += ck.number(c, "data.device_share", 0.0, 1.0, low_open=True)
  p += ck.integer(c, "data.prefetch", 1)
  if isinstance(c.data.classes, str):
    try:
      parse_classes(c.data.classes)  # the format; the class ids need the dataset
    except InputError as error:
      p.append(str(error))
  if c.data.classes and c.data.source != "images":
    p.append(f"config.data.classes={c.data.classes!r} picks classes of an image dataset, "
             f"but config.data.source is {c.data.source!r}; use source='images' (e.g. "
             "dataset='sklearn_digits') or leave classes empty")
  if c.data.source == "digits" and not p:
    p += ck.integer(c, "data.target", 0, 9)
  p += ck.choice(c, "model.variant", ("A", "F"))
  for key in ("model.kappa", "model.nu", "model.prior_temperature"):
    p += ck.number(c, key, 0.0, low_open=True)
  p += ck.choice(c, "model.backbone", ["", *sorted(BACKBONES)])
  p += ck.boolean(c, "model.frozen_features") + ck.integer(c, "model.input_size", 0)
  p += ck.choice(c, "model.input_norm", ("dataset", "imagenet", "inception"))
  p += ck.text(c, "model.feature_cache")
  for group in ("backbone", "mu", "eta", "prior"):
    p += ck.number(c, f"optim.lr.{group}", 0.0) + ck.boolean(c, f"optim.frozen.{group}")
  p += ck.number(c, "optim.momentum", 0.0, 1.0) + ck.number(c, "optim.weight_decay", 0.0)
  p += ck.integer(c, "num_steps", 1) + ck.integer(c, "batch_size", 1)
  p += ck.integer(c, "eval_batch_size", 1)
  p += ck.integer(c, "log_every", 1) + ck.boolean(c, "progress_bar")
  p += ck.integer(c, "steps_per_call", 0)
  p += ck.integer(c, "checkpoint.every", 1) + ck.integer(c, "checkpoint.max_to_keep", 1)
  return p


def validate(c: ml_collections.ConfigDict) -> None:
  """Runs every rule (the base's and each registered defense's) before any work.

  Raises:
    InputError: one line listing every problem found.
  """
  problems = check_base(c)
  for defense in defenses.defense_classes():
    problems += defense.check(c)
  if problems:
    more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
    raise InputError(problems[0] + more)
