"""Defaults shared by the feature-matrix configs (spec sections 4, 5 and 14)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """The reference's FM-style hyper-parameters on a feature matrix."""
  c = ml_collections.ConfigDict()
  c.seed = 0

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
  c.model.backbone_weights = ""  # .msgpack from models/convert.py ("" = random init)
  c.model.frozen_features = False  # FM: frozen backbone, features extracted once
  c.model.input_size = 0  # > 0: resize normalised images to this side (DINOv2 on CIFAR)

  c.estep = ml_collections.ConfigDict()
  c.estep.period = 500  # T: M-steps between E-steps (FM 500, SS 1000)
  c.estep.epsilon = 1.0 / 25.0  # 1 / lambda
  c.estep.threshold = 1e-3  # stop when the class-marginal L1 error is below this
  c.estep.max_iterations = 10_001
  c.estep.inner_iterations = 10
  c.estep.reference_iterations = False  # True: exactly 10,001 iterations (quirk 1)
  c.estep.uniform_first = True  # uniform p(y|l) at the first E-step (quirk 8)
  c.estep.chunk_size = 8192  # rows of log P computed at a time

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

  c.ssl = ml_collections.ConfigDict()
  c.ssl.enabled = False  # pretrain the backbone without labels on the poisoned set
  c.ssl.method = "all4one"  # the reference's; or "simclr"
  c.ssl.num_steps = 1000
  c.ssl.batch_size = 256
  c.ssl.lr = 1.0  # LARS peak lr per 256 examples (All4One 1.0; SimCLR uses 0.4)
  c.ssl.weight_decay = 1e-5
  c.ssl.warmup_steps = 100
  c.ssl.temperature = 0.2  # SimCLR's NT-Xent
  c.ssl.proj_hidden = 2048
  c.ssl.proj_dim = 256
  c.ssl.pred_hidden = 4096  # All4One's predictors
  c.ssl.queue_size = 98_304  # All4One's support-set queue
  c.ssl.base_tau = 0.99  # All4One's momentum encoder, cosine to 1
  c.ssl.knn_every = 500  # kNN accuracy on the clean test set (0 = never)

  c.leiden = ml_collections.ConfigDict()
  c.leiden.enabled = False  # SS variants: drop at most one outlier cluster (spec 9)
  c.leiden.delta = 0.275
  c.leiden.num_neighbors = 50

  c.baseline = ml_collections.ConfigDict()
  c.baseline.enabled = True  # also train the no-defense classifier (first row)
  c.baseline.lr = 0.0  # > 0: one learning rate with cosine decay (standard recipe)
  return c
