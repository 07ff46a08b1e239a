"""ImageNet-1k (TFDS imagenet2012, manual download): kappa = nu = 20; BadNets,
Blend, WaNet. The reference's own ImageNet-1k configs are incomplete (spec 7, 15).

The images are streamed (`data.placement="stream"`): each process reads, decodes
and poisons only its rows of each batch, and the E-step embeds the training set
batch by batch into features sharded over every device. An ImageNet-layout image
folder (ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/*.JPEG) works in place of TFDS:
--config.data.dataset=ROOT. On several hosts or a pod slice see experiments/.

Cost (estimated, not yet measured): SS pretrains a ResNet-50 for days on one GPU;
FM is one ViT-g/14 pass over 1.33M images.

  python -m vibe_jax.main --config=configs/imagenet1k.py:attack=badnets,variant=ss_f --workdir=DIR

Arguments after the colon: attack (see configs/grid.py), variant (ss_a, ss_f, fm_a,
fm_f), runlocal=1 (a tiny smoke-test version). Expected results: not yet measured.
"""

from vibe_jax.config.grid import experiment_config


def get_config(arg=None):
  """Returns the imagenet1k experiment named by `arg`."""
  return experiment_config("imagenet1k", arg)
