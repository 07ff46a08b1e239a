"""No defense (the first row of every table): the same backbone and vMF classifier
as VIBE, trained with cross-entropy of p(l|x) on the given (poisoned) labels.

Config section `baseline`: `lr` > 0 trains every group with that one learning
rate and cosine decay (the standard supervised recipe, used on images); 0 keeps
`config.optim`'s grouped learning rates (the FM baseline: the same head on the
frozen features).
"""

import dataclasses

import ml_collections

from vibe_jax import checks
from vibe_jax.defenses.base import (Defense, DefenseContext, DefenseOutcome, register,
                                    train_baseline)
from vibe_jax.train import stage_seconds, variables

__all__ = ["NoDefense"]


@register("none")
@dataclasses.dataclass(frozen=True)
class NoDefense(Defense):
  """Cross-entropy on the given labels; checkpoints in `workdir/baseline/`."""

  workdir_entries = ("baseline",)

  @staticmethod
  def add_defaults(config: ml_collections.ConfigDict) -> None:
    config.baseline = ml_collections.ConfigDict()
    config.baseline.lr = 0.0  # > 0: one learning rate with cosine decay (standard recipe)

  @staticmethod
  def check(config: ml_collections.ConfigDict) -> list[str]:
    return checks.number(config, "baseline.lr", 0.0)

  def run(self, ctx: DefenseContext) -> DefenseOutcome:
    """Trains (or resumes) the classifier on the given labels."""
    model, state, seen = train_baseline(ctx)
    return DefenseOutcome("no defense", model, variables(state), ctx.inputs,
                          {"images_seen": seen},
                          outputs={"checkpoints": str(ctx.workdir / "baseline" / "checkpoints"),
                                   "steps": ctx.config.num_steps},
                          seconds=stage_seconds(ctx.workdir, "baseline"))
