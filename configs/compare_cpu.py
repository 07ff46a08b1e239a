"""Four defenses on one poisoned CIFAR-10 subset, on a 2-core CPU: the README's
comparison table.

  python -m vibe_jax.main --config=configs/compare_cpu.py --workdir=workdirs/compare_badnets
  python -m vibe_jax.main --config=configs/compare_cpu.py:blend --workdir=workdirs/compare_blend

The setting of `configs/cifar10_cpu.py` (10% attack, target 0, a stratified
10,000-image training subset of ../shared/data/cifar10-jpeg, a 2,000-image test
subset, the small CNN trained from scratch) with `config.defenses =
"none,abl,cbd,vibe,distill"`, the distillation's variations being the `identity`
oracle (the clean originals: what distillation gives when the generator removes
every trigger and changes nothing else). The same budget for every defense: 1,000 supervised steps of
128 images for the defended model (12.8 epochs). ABL's isolation and fine-tuning
share those steps (and unlearning adds 20 passes over its 100 isolated images);
CBD adds its confounder's 5 epochs; VIBE-SS-F adds 1,000 unlabelled SimCLR steps;
the distillation's teacher is the no-defense model and its student trains as long.
ABL and CBD train with the no-defense row's learning rate (0.05; `abl.lr = cbd.lr
= 0`) under their references' step schedules, since 0.1 is the references' value
for their own networks. The argument picks the attack (default badnets).
"""

from configs import cifar10_cpu


def get_config(attack: str = "badnets"):
  """Returns the comparison on `attack` (an attack name of vibe_jax.attacks)."""
  c = cifar10_cpu.get_config()
  c.data.attack = attack or "badnets"
  c.defenses = "none,abl,cbd,vibe,distill"
  c.abl.lr = c.cbd.lr = 0.0  # the no-defense rate (baseline.lr)
  # Real variations need a pretrained diffusion model (--config.distill.generator=
  # diffusers --config.distill.model_path=DIR); without one, the row is the oracle.
  c.distill.generator = "identity"
  return c
