"""VIBE (spec 3-5): on images, optionally self-supervised pretraining (SS) and
Leiden outlier filtering first; then EM: an E-step every `estep.period` M-steps
(`EStepHook`), M-steps on -[log p(l|x) + log p(y|l[,x])] at the pseudo-labels
(`vibe_jax.mstep`). Checkpoints in `workdir/vibe/`, the final pseudo-labels in
`workdir/pseudo_labels.npy`.

Owns the config sections `estep`, `ssl` and `leiden` (`add_defaults`).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vibe_jax import estep, files, mstep, parallel
from vibe_jax import checks as ck
from vibe_jax.defenses.base import (Defense, DefenseContext, DefenseOutcome, build_classifier,
                                    grouped_sgd, initial_classifier, register)
from vibe_jax.defenses.vibe.estep_hook import EStepHook, pseudo_label_metrics
from vibe_jax.errors import InputError
from vibe_jax.stages import filter_outliers
from vibe_jax.stages.ssl import pretrain
from vibe_jax.train import (LoopSettings, batch_source, classifier_state, fit, stage_seconds,
                            variables)

__all__ = ["VIBE"]


def _add_estep(c: ml_collections.ConfigDict) -> None:
  c.estep = ml_collections.ConfigDict()
  c.estep.period = 500  # T: M-steps between E-steps (FM 500, SS 1000)
  c.estep.epsilon = 1.0 / 25.0  # 1 / lambda
  c.estep.threshold = 1e-3  # stop when the class-marginal L1 error is below this
  c.estep.max_iterations = 10_001
  c.estep.inner_iterations = 10
  c.estep.reference_iterations = False  # True: exactly 10,001 iterations (quirk 1)
  c.estep.uniform_first = True  # uniform p(y|l) at the first E-step (quirk 8)
  c.estep.chunk_size = 8192  # rows of log P computed at a time
  # "ott": ott-jax's Sinkhorn (the reference's algorithm); "blocked": ours over row
  # blocks, no N x K temporary (benchmarks/estep.py; same labels to 99.99%).
  c.estep.solver = "ott"
  # True: never hold log P; recompute its rows from the features in every
  # Sinkhorn iteration (memory O(N x D), for label sets far larger than 1,000).
  c.estep.recompute = False


def _check_estep(c: ml_collections.ConfigDict) -> list[str]:
  return (ck.integer(c, "estep.period", 1) + ck.number(c, "estep.epsilon", 0.0, low_open=True)
          + ck.number(c, "estep.threshold", 0.0, low_open=True)
          + ck.integer(c, "estep.max_iterations", 1) + ck.integer(c, "estep.inner_iterations", 1)
          + ck.boolean(c, "estep.reference_iterations") + ck.boolean(c, "estep.uniform_first")
          + ck.integer(c, "estep.chunk_size", 1)
          + ck.choice(c, "estep.solver", list(estep.SOLVERS))
          + ck.boolean(c, "estep.recompute"))


def _add_ssl(c: ml_collections.ConfigDict) -> None:
  c.ssl = ml_collections.ConfigDict()
  c.ssl.enabled = False  # pretrain the backbone without labels on the poisoned set
  c.ssl.method = "all4one"  # the reference's; or "simclr"
  c.ssl.num_steps = 1000
  c.ssl.batch_size = 256
  c.ssl.lr = 1.0  # LARS peak lr per 256 examples (All4One 1.0; SimCLR uses 0.4)
  c.ssl.weight_decay = 1e-5
  c.ssl.warmup_steps = 100
  c.ssl.temperature = 0.2  # SimCLR's NT-Xent
  c.ssl.proj_hidden = 2048
  c.ssl.proj_dim = 256
  c.ssl.pred_hidden = 4096  # All4One's predictors
  c.ssl.queue_size = 98_304  # All4One's support-set queue
  c.ssl.base_tau = 0.99  # All4One's momentum encoder, cosine to 1
  c.ssl.knn_every = 500  # kNN accuracy on the clean test set (0 = never)


def _check_ssl(c: ml_collections.ConfigDict) -> list[str]:
  p = ck.boolean(c, "ssl.enabled") + ck.text(c, "ssl.method")
  p += ck.integer(c, "ssl.num_steps", 1) + ck.integer(c, "ssl.batch_size", 2)
  p += ck.number(c, "ssl.lr", 0.0, low_open=True) + ck.number(c, "ssl.weight_decay", 0.0)
  p += ck.integer(c, "ssl.warmup_steps", 0) + ck.number(c, "ssl.temperature", 0.0, low_open=True)
  for key in ("ssl.proj_hidden", "ssl.proj_dim", "ssl.pred_hidden", "ssl.queue_size"):
    p += ck.integer(c, key, 1)
  p += ck.number(c, "ssl.base_tau", 0.0, 1.0) + ck.integer(c, "ssl.knn_every", 0)
  return p


def _add_leiden(c: ml_collections.ConfigDict) -> None:
  c.leiden = ml_collections.ConfigDict()
  c.leiden.enabled = False  # SS variants: drop at most one outlier cluster (spec 9)
  c.leiden.delta = 0.275
  c.leiden.num_neighbors = 50


def _check_leiden(c: ml_collections.ConfigDict) -> list[str]:
  return (ck.boolean(c, "leiden.enabled") + ck.number(c, "leiden.delta", 0.0, low_open=True)
          + ck.integer(c, "leiden.num_neighbors", 1))


@register("vibe")
@dataclasses.dataclass(frozen=True)
class VIBE(Defense):
  """VIBE-A or VIBE-F (`config.model.variant`), SS or FM by the data it gets."""

  workdir_entries = ("ssl", "leiden.json", "vibe", "pseudo_labels.npy")

  @staticmethod
  def add_defaults(config: ml_collections.ConfigDict) -> None:
    _add_estep(config)
    _add_ssl(config)
    _add_leiden(config)

  @staticmethod
  def check(config: ml_collections.ConfigDict) -> list[str]:
    return _check_estep(config) + _check_ssl(config) + _check_leiden(config)

  def run(self, ctx: DefenseContext) -> DefenseOutcome:
    """SSL (if enabled) -> Leiden (if enabled) -> EM; resumes each from its checkpoints."""
    config, data = ctx.config, ctx.data
    row, outputs = {}, {}
    weights = config.model.backbone_weights
    if config.ssl.enabled:
      if ctx.backbone is None:
        raise InputError("config.ssl needs image data (config.data.source='images') and "
                         "a trained backbone (not config.model.frozen_features)")
      ssl = pretrain(config, data, ctx.inputs.info, ctx.workdir, ctx.log)
      weights = str(ssl.backbone_path)
      row["ssl_wall_time_s"] = round(ssl.seconds, 2)
      row["ssl_images_seen"] = config.ssl.num_steps * config.ssl.batch_size
      outputs["ssl"] = ssl.summary()
    began = time.time()
    model = build_classifier(ctx)
    init_vars, features = initial_classifier(ctx, model, weights)
    if config.leiden.enabled:
      kept = filter_outliers(config.leiden, features, data, config.seed, ctx.workdir, ctx.log)
      data, features = kept.data, kept.features
      row.update(leiden_removed=kept.removed, leiden_removed_poisoned=kept.removed_poisoned)
      outputs["leiden"] = kept.summary()
    setup = time.time() - began
    state = classifier_state(init_vars, features, data.train_labels, ctx.data.num_classes,
                             grouped_sgd(config.optim), config.seed,
                             extra={"pseudo_labels": jnp.asarray(data.train_labels, jnp.int32)})
    source = batch_source({"x": data.train_features, "y": data.train_labels},
                          config.batch_size, config.seed, config.data.prefetch)
    state = fit(name="vibe", state=state,
                step_fn=ctx.inputs.augmenting(mstep.make_vibe_step(model)), source=source,
                settings=LoopSettings.from_config(config), workdir=ctx.workdir, log=ctx.log,
                key=jax.random.PRNGKey(config.seed),
                hooks=[EStepHook(model, ctx.inputs, config.estep, data, ctx.log,
                                 eval_batch_size=config.eval_batch_size)])
    row["images_seen"] = config.num_steps * source.batch_size
    labels = parallel.to_host(state.extra["pseudo_labels"])
    path = ctx.workdir / "pseudo_labels.npy"
    files.save_with(path, lambda tmp: np.save(tmp, labels))
    row.update({f"pseudo_{k}": v for k, v in pseudo_label_metrics(labels, data).items()})
    seconds = stage_seconds(ctx.workdir, "vibe")
    outputs["em"] = {"checkpoints": str(ctx.workdir / "vibe" / "checkpoints"),
                     "steps": config.num_steps, "pseudo_labels": str(path),
                     "training_examples": len(labels), "seconds": seconds,
                     "setup_seconds_this_run": round(setup, 2)}
    return DefenseOutcome(f"VIBE-{config.model.variant}", model, variables(state), ctx.inputs,
                          row, outputs, seconds)
