"""No defense: the classifier trained on the poisoned labels as they are."""

from vibe_jax.defenses.none.defense import NoDefense

__all__ = ["NoDefense"]
