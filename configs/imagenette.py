"""ImageNet-subset experiments on Imagenette, with the reference's ImageNet-30
hyper-parameters (kappa 10, standard-stem ResNet-18, SSL batch 128, 224 px).

For the copy beside this project: --config.data.dataset=../shared/data/imagenette-jpeg.
Cost (estimated, not yet measured): SS = 94k SimCLR steps at batch 128 on 224 px
images plus 30k VIBE steps; FM = one ViT-g/14 pass over the images.

  python -m vibe_jax.main --config=configs/imagenette.py:attack=badnets,variant=ss_f --workdir=DIR

Arguments after the colon: attack (see configs/grid.py), variant (ss_a, ss_f, fm_a,
fm_f), runlocal=1 (a tiny smoke-test version). Expected results: not yet measured.
"""

from vibe_jax.config.grid import experiment_config


def get_config(arg=None):
  """Returns the imagenette experiment named by `arg`."""
  return experiment_config("imagenette", arg)
