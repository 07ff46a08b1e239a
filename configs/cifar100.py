"""CIFAR-100: BadNets, Blend, WaNet, FTrojan x {ss_a, ss_f, fm_a, fm_f}; kappa = nu = 20.

Cost (estimated, not yet measured): as CIFAR-10.

  python -m vibe_jax.main --config=configs/cifar100.py:attack=badnets,variant=ss_f --workdir=DIR

Arguments after the colon: attack (see configs/grid.py), variant (ss_a, ss_f, fm_a,
fm_f), runlocal=1 (a tiny smoke-test version). Expected results: not yet measured.
"""

from vibe_jax.config.grid import experiment_config


def get_config(arg=None):
  """Returns the cifar100 experiment named by `arg`."""
  return experiment_config("cifar100", arg)
