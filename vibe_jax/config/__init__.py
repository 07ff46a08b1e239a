"""The base config every experiment starts from.

It holds what every run shares (seed, data, model, optimizer groups, steps,
logging, checkpoints, which defenses and evaluators run); each registered defense
adds the sections it owns (`Defense.add_defaults`: `baseline` for no defense;
`estep`, `ssl`, `leiden` for VIBE). Config files in `configs/` call `base_config()`
and change what their experiment needs.
"""

import ml_collections

from vibe_jax import defenses

__all__ = ["base_config"]


def base_config() -> ml_collections.ConfigDict:
  """The reference's FM-style hyper-parameters on a feature matrix (spec 4, 5, 14)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.defenses = "none,vibe"  # run in this order, one result row each
  c.evaluators = "clean_acc,asr"  # the figures of each row (vibe_jax.train.evaluators)

  c.data = ml_collections.ConfigDict()
  c.data.source = "npz"  # "npz" (data.path), "digits" (quickstart) or "images"
  c.data.path = ""
  # source="images": a TFDS name or an image folder, poisoned by data.attack.
  c.data.dataset = ""
  c.data.data_dir = ""  # TFDS data_dir ("" = TFDS's default)
  c.data.attack = "badnets"
  c.data.attack_params = ""  # "key=value,..." overriding the attack's defaults
  c.data.train_subset = 0  # > 0: a stratified subset of this many training images
  c.data.test_subset = 0
  c.data.poison_rate = 0.1  # digits only
  c.data.target = 0  # digits only
  c.data.patch = 2  # digits only: trigger side in pixels
  c.data.l2_normalize = False  # spec quirk 3: True = the reference's cached features

  c.model = ml_collections.ConfigDict()
  c.model.variant = "F"  # "A": p(y|l); "F": p(y|l,x)
  c.model.kappa = 10.0  # 10 CIFAR-10 / ImageNet-30, 20 CIFAR-100 / ImageNet-1k
  c.model.nu = 10.0
  c.model.prior_temperature = 0.02
  c.model.backbone = ""  # "" for feature vectors; a name from models/backbones.py
  c.model.backbone_weights = ""  # .msgpack from tools/convert.py ("" = random init)
  c.model.frozen_features = False  # FM: frozen backbone, features extracted once
  c.model.input_size = 0  # > 0: resize normalised images to this side (DINOv2 on CIFAR)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = ml_collections.ConfigDict(
      dict(backbone=1e-3, mu=1e-2, eta=1e-2, prior=0.1))
  c.optim.frozen = ml_collections.ConfigDict(
      dict(backbone=False, mu=False, eta=False, prior=False))
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4

  c.num_steps = 15_000
  c.batch_size = 1024
  c.log_every = 250
  c.progress_bar = True

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000
  c.checkpoint.max_to_keep = 3

  for defense in defenses.defense_classes():
    defense.add_defaults(c)
  return c
