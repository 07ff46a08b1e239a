"""The defense interface and its registry.

A defense is a frozen dataclass registered by name; `config.defenses = "none,vibe"`
runs each in turn on the same poisoned data. It owns its config defaults
(`add_defaults`, called by `vibe_jax.config.base_config`) and returns a
`DefenseOutcome`: the classifier it trained, whose result row the experiment
fills by running the evaluators, plus the figures and stage outputs only it knows.

Add a defense: a sub-package `vibe_jax/defenses/<name>/` with a `Defense`
subclass decorated with `@register("<name>")`, its defaults and its tests; import
it in `vibe_jax/defenses/__init__.py`. Nothing else changes.
"""

import dataclasses
import hashlib
import pathlib
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vibe_jax import mstep
from vibe_jax.data.features import FeatureData
from vibe_jax.data.load import CleanViews
from vibe_jax.registry import Registry
from vibe_jax.report import JsonLines
from vibe_jax.models import VIBEModel
from vibe_jax.train import (Inputs, LoopSettings, batch_source, build_model,
                            classifier_state, fit, initial_features, initial_variables)

__all__ = ["DefenseContext", "DefenseOutcome", "Defense", "register", "build", "names",
           "defense_classes", "build_classifier", "initial_classifier", "grouped_sgd",
           "peer_optimizer", "train_phase", "baseline_optimizer", "train_baseline"]


@dataclasses.dataclass(frozen=True)
class DefenseContext:
  """What the experiment hands every defense (read-only).

  Attributes:
    config: the run's frozen config.
    workdir: the run's directory (a defense's checkpoints go to named stages in it).
    data: the poisoned training set and the test sets (features or uint8 images).
    inputs: how the stored inputs become model inputs.
    backbone: the backbone to train on images; None on feature vectors.
    log: writes one metrics row (JSON lines).
    clean: on image data, the unpoisoned images behind `data` (for defenses that
      need them, e.g. the distillation's identity oracle); None otherwise.
  """

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  data: FeatureData
  inputs: Inputs
  backbone: Optional[str]
  log: JsonLines
  clean: Optional[CleanViews] = None


@dataclasses.dataclass(frozen=True)
class DefenseOutcome:
  """A trained classifier and what the defense reports about its own training.

  Attributes:
    method: the row's name ("no defense", "VIBE-F", ...).
    model: a module with `embed` and class scores from `__call__`.
    variables: its trained variables.
    inputs: how it reads the test sets.
    row: extra row figures (e.g. "ssl_wall_time_s", the time of a stage before
      training proper, and pseudo-label statistics).
    outputs: what results.json records under the defense's name (paths, counts,
      times of each stage).
    seconds: how long its training took, added up over every run that resumed it
      (`train.stage_seconds`); the row's wall time is this plus the evaluation.
  """

  method: str
  model: nn.Module
  variables: dict[str, Any]
  inputs: Inputs
  row: dict[str, Any] = dataclasses.field(default_factory=dict)
  outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Defense:
  """Base class of the defenses."""

  name: ClassVar[str] = ""
  # What the defense writes into the workdir (stage directories, files): a fresh
  # run (`--fresh`) moves these aside with the run's common files.
  workdir_entries: ClassVar[tuple[str, ...]] = ()
  # True for a defense that builds its own models (RAB, Cert-SSBD: small binary
  # ensembles), so a run of such defenses alone needs no config.model.backbone.
  own_model: ClassVar[bool] = False

  @staticmethod
  def add_defaults(config: ml_collections.ConfigDict) -> None:
    """Adds the config sections this defense owns (with their defaults)."""

  @staticmethod
  def check(config: ml_collections.ConfigDict) -> list[str]:
    """The problems of the values in this defense's sections (see
    `vibe_jax.checks`); run before any work starts."""
    del config
    return []

  def run(self, ctx: DefenseContext) -> DefenseOutcome:
    """Trains (or resumes) the defended classifier."""
    raise NotImplementedError


_REGISTRY: Registry[Defense] = Registry("defense")
register = _REGISTRY.register
names = _REGISTRY.names
build = _REGISTRY.build


def build_classifier(ctx: DefenseContext) -> VIBEModel:
  """The classifier of `ctx`: its backbone (or none on features) and the VIBE head
  of `config.model`; every defense that trains the VIBE classifier starts here."""
  dim = None if ctx.backbone else ctx.data.train_features.shape[1]
  return build_model(ctx.config.model, ctx.data.num_classes, backbone=ctx.backbone, dim=dim)


def initial_classifier(ctx: DefenseContext, model: VIBEModel, weights: Optional[str],
                       seed: Optional[int] = None) -> tuple[dict[str, Any], np.ndarray]:
  """(variables, training features under them) of `model` at step 0: the backbone
  random or from the `.msgpack` `weights`; the features are what the head is
  initialised from (and what outlier filtering clusters)."""
  sample = ctx.inputs.eval(jnp.asarray(ctx.data.train_features[:1]))
  variables = initial_variables(model, sample, ctx.config.seed if seed is None else seed,
                                weights)
  return variables, initial_features(model, variables, ctx.data.train_features, ctx.inputs,
                                     ctx.config.eval_batch_size)


def grouped_sgd(optim: ml_collections.ConfigDict, learning_rates: Optional[dict] = None, *,
                weight_decay: Optional[float] = None, nesterov: bool = False):
  """The grouped SGD of `config.optim` (spec 5.2): a learning rate (or schedule) per
  group (backbone, mu, eta, prior), default `optim.lr`; frozen groups never move.
  `weight_decay` (default `optim.weight_decay`) and `nesterov` serve the peer
  defenses, whose references use their own."""
  frozen = tuple(g for g in mstep.GROUPS if optim.frozen.get(g, False))
  decay = optim.weight_decay if weight_decay is None else weight_decay
  return mstep.make_optimizer(dict(learning_rates or optim.lr), momentum=optim.momentum,
                              weight_decay=decay, frozen=frozen, nesterov=nesterov)


def peer_optimizer(ctx: DefenseContext, lr: float, boundaries: dict[float, float],
                   num_steps: int, weight_decay: float):
  """The optimizer of a peer defense's phase (ABL, CBD): Nesterov SGD with the
  reference's weight decay and a piecewise-constant learning rate `lr`, scaled by
  `boundaries` {share of the phase: factor} (the references' epoch steps); `lr`
  0 falls back to the no-defense recipe's rates (`config.baseline.lr`, else the
  grouped `config.optim.lr`), so a peer can train exactly like the baseline."""
  config = ctx.config
  if lr:
    rates = {g: lr for g in mstep.GROUPS}
  elif config.baseline.lr:
    rates = {g: config.baseline.lr for g in mstep.GROUPS}
  else:
    rates = dict(config.optim.lr)
  steps = {int(share * num_steps): factor for share, factor in boundaries.items()
           if 0 < int(share * num_steps) < num_steps}
  schedules = {g: optax.piecewise_constant_schedule(r, steps) for g, r in rates.items()}
  return grouped_sgd(config.optim, schedules, weight_decay=weight_decay, nesterov=True)


def train_phase(ctx: DefenseContext, name: str, state, step_fn, arrays: dict[str, Any],
                num_steps: int, *, batch_size: Optional[int] = None, augment: bool = True,
                hooks=(), state_sharding=None):
  """Trains (or resumes) one phase of a defense as its own stage `name` of the one
  loop (`train.fit`): checkpoints in `workdir/<name>/`, batches of `arrays` ("x",
  "y", any more rows), inputs augmented in training (or only normalised with
  `augment=False`, as ABL's unlearning does); `state_sharding` as `train.fit`'s.
  Returns the final state."""
  config = ctx.config
  source = batch_source(arrays, batch_size or config.batch_size, (config.seed, _stage_seed(name)),
                        config.data.prefetch)
  if augment:
    step_fn = ctx.inputs.augmenting(step_fn)
  else:
    inner = step_fn
    step_fn = lambda state, batch: inner(state, {**batch, "x": ctx.inputs.eval(batch["x"])})
  return fit(name=name, state=state, step_fn=step_fn, source=source,
             settings=LoopSettings.from_config(config, num_steps), workdir=ctx.workdir,
             log=ctx.log, key=jax.random.fold_in(jax.random.PRNGKey(config.seed),
                                                 _stage_seed(name)), hooks=hooks,
             state_sharding=state_sharding)


def baseline_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The no-defense recipe's optimizer: grouped SGD of `config.optim`, or one
  cosine-decayed `config.baseline.lr` for every group."""
  if not config.baseline.lr:
    return grouped_sgd(config.optim)
  schedule = optax.cosine_decay_schedule(config.baseline.lr, config.num_steps)
  return grouped_sgd(config.optim, {g: schedule for g in mstep.GROUPS})


def train_baseline(ctx: DefenseContext) -> tuple[VIBEModel, Any, int]:
  """(model, final state, images seen) of the no-defense recipe: cross-entropy on the
  given labels, stage `baseline` (checkpoints in `workdir/baseline/`). A finished
  stage is restored, not retrained, so a defense that needs this model (the
  distillation teacher) shares the no-defense row's."""
  config, data = ctx.config, ctx.data
  model = build_classifier(ctx)
  init_vars, features = initial_classifier(ctx, model, config.model.backbone_weights)
  state = classifier_state(init_vars, features, data.train_labels, data.num_classes,
                           baseline_optimizer(config), config.seed)
  source = batch_source({"x": data.train_features, "y": data.train_labels},
                        config.batch_size, config.seed, config.data.prefetch)
  state = fit(name="baseline", state=state,
              step_fn=ctx.inputs.augmenting(mstep.make_baseline_step(model)),
              source=source, settings=LoopSettings.from_config(config),
              workdir=ctx.workdir, log=ctx.log, key=jax.random.PRNGKey(config.seed))
  return model, state, config.num_steps * source.batch_size


def _stage_seed(name: str) -> int:
  # A stable number per stage name (Python's hash() changes between processes).
  return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") % (2**31)


def defense_classes() -> list[type[Defense]]:
  """Every registered defense class, by name."""
  return [_REGISTRY.get(n) for n in names()]
