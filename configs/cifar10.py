"""CIFAR-10: 8 attacks x {ss_a, ss_f, fm_a, fm_f}, the reference's grid (spec 7).

Cost (estimated from the step counts, not yet measured): SS = 195k SimCLR steps
(1000 epochs, as the reference's All4One) plus 30k VIBE steps of ResNet-18 at batch
256; lower --config.ssl.num_steps for a shorter run. FM = one DINOv2 ViT-g/14 pass
over 70k images at 224 px, then 15k cheap VIBE steps on cached features.

  python -m vibe_jax.main --config=configs/cifar10.py:attack=badnets,variant=ss_f --workdir=DIR

Arguments after the colon: attack (see configs/grid.py), variant (ss_a, ss_f, fm_a,
fm_f), runlocal=1 (a tiny smoke-test version). Expected results: not yet measured.
"""

from vibe_jax.config.grid import experiment_config


def get_config(arg=None):
  """Returns the cifar10 experiment named by `arg`."""
  return experiment_config("cifar10", arg)
