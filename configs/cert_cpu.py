"""Certified backdoor defense on binary tasks, on a 2-core CPU: RAB and Cert-SSBD side
by side (the README's certified curves).

  python -m vibe_jax.main --config=configs/cert_cpu.py:task=digits --workdir=workdirs/cert_digits
  python -m vibe_jax.main --config=configs/cert_cpu.py:task=cifar --workdir=workdirs/cert_cifar

Arguments after the colon (key=value, comma-separated):
  task     digits: scikit-learn's 8x8 digits 0 vs 1 (the stand-in for the public
           code's MNIST 0 vs 1, which cannot be downloaded here);
           cifar: CIFAR-10 bird (class 0, the target) vs airplane (class 1) from
           ../shared/data/cifar10-jpeg, the public code's CIFAR task and labelling;
           imagenette: two classes of an Imagenette-layout folder at 224 px
           (../shared/data/imagenette-jpeg, tench vs English springer by default;
           the public code's 224 px task is Kaggle's dogs vs cats).
  attack   rab_onepixel (default), rab_fourpixel or rab_blending, delta 1 (the
           trigger's l2 size in [0, 1] pixel units), 2% of the training set, labels
           flipped to class 0, as the public code.
  members  N_m (default: digits 1000 as the public code, cifar 32, imagenette 16).
  seed     0.

The public code's recipe otherwise: Adam lr 1e-3; MNIST 20 epochs of batch 128 ->
digits 20 epochs of 128; CIFAR 10 epochs of batch 64 -> 2 here; 224 px 5 epochs of
32 (cut to what this CPU affords: see `_TASKS`); sigma 0.12 (the public code's
README example) for digits, 0.5 (its eval.py default) for CIFAR, 0.25 at 224 px; sigma_i
storage updates with lr 1e-4, once per batch; alpha 0.001. Both rows certify with
the real N_m in the Hoeffding term (`--config.cert.hoeffding_members=1000` gives
the public code's constant).
"""

import pathlib

from vibe_jax import keyvalue
from vibe_jax.config import base_config

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"

# task: (dataset, classes, epochs, batch size, sigma, members, train subset)
_TASKS = {
    "digits": ("sklearn_digits", "0,1", 20, 128, 0.12, 1000, 0),
    # CIFAR-10 folder order: 0 airplane, 2 bird; "2,0" makes bird class 0 (the
    # target) and airplane 1, the public code's labelling.
    "cifar": (str(DATA / "cifar10-jpeg"), "2,0", 2, 64, 0.5, 32, 0),
    "imagenette": (str(DATA / "imagenette-jpeg"), "0,1", 5, 32, 0.25, 16, 0),
}


def get_config(arg: str = ""):
  """Returns the RAB + Cert-SSBD run of the task `arg` names (see the module doc)."""
  args = {"task": "digits", "attack": "rab_onepixel", "members": 0, "seed": 0,
          **keyvalue.parse(arg or "")}
  if args["task"] not in _TASKS:
    raise ValueError(f"configs/cert_cpu.py: task {args['task']!r}; known: "
                     f"{', '.join(_TASKS)}")
  dataset, classes, epochs, batch, sigma, members, subset = _TASKS[args["task"]]
  c = base_config()
  c.seed = int(args["seed"])
  c.defenses = "rab,cert_ssbd"
  c.evaluators = "clean_acc,asr,certify"
  c.data.source = "images"
  c.data.dataset = dataset
  c.data.classes = classes
  c.data.attack = args["attack"]
  c.data.attack_params = "delta=1.0,rate=0.02,target=0"
  c.data.train_subset = subset
  c.data.placement = "device"
  c.cert.sigma = sigma
  c.cert.members = int(args["members"]) or members
  c.batch_size = batch
  # Steps: `epochs` passes over the two classes' training images.
  c.num_steps = _steps(args["task"], epochs, batch)
  c.log_every = max(1, c.num_steps // 10)
  c.checkpoint.every = max(1, c.num_steps // 4)
  return c


# Training images of the two classes (the folders' counts; digits: the fixed split).
_TRAIN = {"digits": 257, "cifar": 10_000, "imagenette": 600}


def _steps(task: str, epochs: int, batch: int) -> int:
  return max(1, round(epochs * _TRAIN[task] / batch))
