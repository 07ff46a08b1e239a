"""No defense (the first row of every table): the same backbone and vMF classifier
as VIBE, trained with cross-entropy of p(l|x) on the given (poisoned) labels.

Config section `baseline`: `lr` > 0 trains every group with that one learning
rate and cosine decay (the standard supervised recipe, used on images); 0 keeps
`config.optim`'s grouped learning rates (the FM baseline: the same head on the
frozen features).
"""

import dataclasses

import jax
import ml_collections
import optax

from vibe_jax import mstep
from vibe_jax import checks
from vibe_jax.defenses.base import (Defense, DefenseContext, DefenseOutcome, build_classifier,
                                    grouped_sgd, initial_classifier, register)
from vibe_jax.train import (LoopSettings, batch_source, classifier_state, fit, stage_seconds,
                            variables)

__all__ = ["NoDefense", "optimizer"]


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Grouped SGD of `config.optim`, or one cosine-decayed `config.baseline.lr`."""
  if not config.baseline.lr:
    return grouped_sgd(config.optim)
  schedule = optax.cosine_decay_schedule(config.baseline.lr, config.num_steps)
  return grouped_sgd(config.optim, {g: schedule for g in mstep.GROUPS})


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
    config, data = ctx.config, ctx.data
    model = build_classifier(ctx)
    init_vars, features = initial_classifier(ctx, model, config.model.backbone_weights)
    state = classifier_state(init_vars, features, data.train_labels, data.num_classes,
                             optimizer(config), config.seed)
    source = batch_source({"x": data.train_features, "y": data.train_labels},
                          config.batch_size, config.seed, config.data.prefetch)
    state = fit(name="baseline", state=state,
                step_fn=ctx.inputs.augmenting(mstep.make_baseline_step(model)),
                source=source, settings=LoopSettings.from_config(config),
                workdir=ctx.workdir, log=ctx.log, key=jax.random.PRNGKey(config.seed))
    row = {"images_seen": config.num_steps * source.batch_size}
    return DefenseOutcome("no defense", model, variables(state), ctx.inputs, row,
                          outputs={"checkpoints": str(ctx.workdir / "baseline" / "checkpoints"),
                                   "steps": config.num_steps},
                          seconds=stage_seconds(ctx.workdir, "baseline"))
