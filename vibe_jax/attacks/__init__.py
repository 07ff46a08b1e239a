"""Backdoor attacks (a registry of pure, seeded functions) and poisoned-index choice.

  attack = attacks.build("wanet", image_size=32, seed=0)
  images, labels = attack.poison(images, labels, indices)
"""

from vibe_jax.attacks import adaptive, badnets, blend, ftrojan, lc, rab, wanet  # registers
from vibe_jax.attacks.base import Attack, build, names, register
from vibe_jax.attacks.selection import poisoned_indices

__all__ = ["Attack", "build", "names", "register", "poisoned_indices"]
