"""CBD (Causality-inspired Backdoor Defense, Zhang et al., CVPR 2023), as its public
code (`zaixizhang/CBD:train.py`) does it.

Two classifiers of the same architecture (the backbone and head every defense
shares), each a stage of the one training loop with its own checkpoints:

1. `cbd_confounder` (f_B): plain cross-entropy on the poisoned set for
   `cbd.confounder_epochs` (5) epochs only, an early stop meant to catch the
   easy-to-learn trigger shortcut; then frozen (evaluation mode).
2. `cbd` (f_C, the defended model): `config.num_steps` steps of cross-entropy with
   per-example weights w = l_B / (l_B + l_C) (both losses stop-gradient,
   renormalised to mean 1 per batch), so examples the confounder fits easily (low
   l_B: the triggered ones) count little. Learning rate 0.1, times 0.1 at 20% and
   again at 70% of the steps (the reference's epochs 20 and 70 of 100).
   With `cbd.mutual_information` (off by default) the loss adds `cbd.mi_weight`
   (0.01) times a critic's estimate of the mutual information between f_B's and
   f_C's features (`critic.py`); the critic (Adam at lr 0.2, times 0.1 every 20% of
   the steps) maximises it and is spectral-normalised after each update.

Defaults. The mutual-information term is off because the released code leaves it
off (`--disentangle 0`): that is the CBD its users run and the one whose behaviour
any published reproduction reflects; the paper's full objective is one switch
away (`--config.cbd.mutual_information=True`). Nesterov SGD, momentum 0.9, weight
decay 1e-4 as the reference.

Deviations: the reference alternates a whole epoch of critic updates with a whole
epoch of f_C updates; we update both on each batch (f_C with the current critic,
then the critic on f_C's features of that batch), which needs one forward pass
instead of two. On feature vectors (FM runs) both models read the same input
features, so the penalty compares their class scores instead (it would otherwise
be constant). The classifier is ours (backbone + vMF head; "logits" are log p(l|x)).

Budget: f_C sees as many images as the no-defense row; f_B adds its epochs.
Reported (when the poisoning is known): the mean weight the poisoned examples got
over f_C's training (`cbd_poisoned_weight`; the mean over a batch is 1) and the
share of their sightings weighted below 1 (`cbd_poisoned_downweighted`).
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vibe_jax import checks, mstep
from vibe_jax.defenses.base import (Defense, DefenseContext, DefenseOutcome, build_classifier,
                                    initial_classifier, peer_optimizer, register, train_phase)
from vibe_jax.defenses.cbd.critic import Critic, mutual_information, spectral_normalize
from vibe_jax.train import classifier_state, stage_seconds, variables

__all__ = ["CBD", "sample_weights", "make_clean_step", "TALLIES"]

STAGES = ("cbd_confounder", "cbd")
# Running sums in the state when the poisoning is known (for the report only).
TALLIES = ("poisoned_seen", "poisoned_weight", "poisoned_below_one")


def sample_weights(confounder_losses, clean_losses):
  """w = l_B / (l_B + l_C + 1e-8), renormalised to mean 1 (NumPy or JAX arrays)."""
  w = confounder_losses / (confounder_losses + clean_losses + 1e-8)
  return w * w.shape[0] / w.sum()


def _picked(log_p: jax.Array, y: jax.Array) -> jax.Array:
  return -jnp.take_along_axis(log_p, y[:, None], axis=1)[:, 0]


def make_clean_step(model, critic: Critic, critic_tx: optax.GradientTransformation,
                    mi: bool, mi_weight: float):
  """The pure f_C step `(state, batch) -> (state, metrics)`; `state.extra` holds the
  frozen confounder's variables, and the critic's parameters and optimizer state."""
  scores_only = model.backbone is None  # features: compare class scores (see above)

  def step(state, batch: dict):
    x, y = batch["x"], batch["y"]
    mi_key, critic_key = jax.random.split(jax.random.fold_in(batch["key"], 1))
    log_pb, r = model.apply(state.extra["confounder"], x, method="scores_and_features")
    r = jax.lax.stop_gradient(log_pb if scores_only else r)
    confounder_losses = jax.lax.stop_gradient(_picked(log_pb, y))

    def loss_fn(params):
      (log_pc, z), batch_stats = mstep.apply_in_training(model, state, params,
                                                         "scores_and_features", x)
      z = log_pc if scores_only else z
      ce = _picked(log_pc, y)
      w = sample_weights(confounder_losses, jax.lax.stop_gradient(ce))
      loss = jnp.mean(w * ce)
      estimate = jnp.zeros(())
      if mi:
        estimate = mutual_information(critic, state.extra["critic"], r, z, mi_key, True)
        loss = loss + mi_weight * estimate
      return loss, (batch_stats, z, jnp.mean(ce), estimate, w)

    (loss, (batch_stats, z, ce, estimate, w)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if mi:
      z = jax.lax.stop_gradient(z)
      params = state.extra["critic"]
      grads = jax.grad(lambda p: -mutual_information(critic, p, r, z, critic_key, True))(params)
      updates, opt_state = critic_tx.update(grads, state.extra["critic_opt"], params)
      params = spectral_normalize(optax.apply_updates(params, updates))
      new = new.replace(extra={**new.extra, "critic": params, "critic_opt": opt_state})
    metrics = {"loss": loss, "ce": ce, "mi": estimate, "weight_min": jnp.min(w)}
    if "poisoned" in batch:
      # Known poisoning (for the report only): the weights the poisoned examples got.
      p = batch["poisoned"].astype(jnp.float32)
      tally = {"poisoned_seen": jnp.sum(p), "poisoned_weight": jnp.sum(p * w),
               "poisoned_below_one": jnp.sum(p * (w < 1.0))}
      new = new.replace(extra={**new.extra, **{k: new.extra[k] + v for k, v in tally.items()}})
    return new, metrics

  return step


@register("cbd")
@dataclasses.dataclass(frozen=True)
class CBD(Defense):
  """Confounder model, then the re-weighted clean model; checkpoints in
  `workdir/cbd_confounder/` and `workdir/cbd/`."""

  workdir_entries = STAGES

  @staticmethod
  def add_defaults(config: ml_collections.ConfigDict) -> None:
    c = config.cbd = ml_collections.ConfigDict()
    c.confounder_epochs = 5.0  # f_B's early stop
    c.lr = 0.1  # both models; 0 = the no-defense recipe's rates
    c.weight_decay = 1e-4
    c.mutual_information = False  # the released code's default (--disentangle 0)
    c.mi_weight = 0.01
    c.critic_lr = 0.2
    c.critic_dropout = 0.2

  @staticmethod
  def check(config: ml_collections.ConfigDict) -> list[str]:
    return (checks.number(config, "cbd.confounder_epochs", 0.0, low_open=True)
            + checks.number(config, "cbd.lr", 0.0) + checks.number(config, "cbd.weight_decay", 0.0)
            + checks.boolean(config, "cbd.mutual_information")
            + checks.number(config, "cbd.mi_weight", 0.0)
            + checks.number(config, "cbd.critic_lr", 0.0, low_open=True)
            + checks.number(config, "cbd.critic_dropout", 0.0, 1.0))

  def run(self, ctx: DefenseContext) -> DefenseOutcome:
    """Trains (or resumes) f_B, then f_C; reports the weights f_C ends with."""
    config, data, c = ctx.config, ctx.data, ctx.config.cbd
    n, weights = len(data.train_labels), config.model.backbone_weights
    everything = {"x": data.train_features, "y": data.train_labels}
    model = build_classifier(ctx)
    confounder_steps = max(1, math.ceil(c.confounder_epochs * n / min(config.batch_size, n)))

    # f_B starts from its own random initialisation, as the reference's second model.
    b_vars, b_features = initial_classifier(ctx, model, weights, seed=config.seed + 1)
    opt = peer_optimizer(ctx, c.lr, {}, confounder_steps, c.weight_decay)
    b_state = classifier_state(b_vars, b_features, data.train_labels, data.num_classes, opt,
                               config.seed + 1)
    b_state = train_phase(ctx, "cbd_confounder", b_state, mstep.make_baseline_step(model),
                          everything, confounder_steps)
    confounder = variables(b_state)

    c_vars, c_features = initial_classifier(ctx, model, weights)
    dim = data.num_classes if model.backbone is None else c_features.shape[1]
    critic = Critic(hidden=dim, dropout=c.critic_dropout)
    zeros = jnp.zeros((1, dim))
    critic_params = spectral_normalize(critic.init(
        jax.random.PRNGKey(config.seed + 2), zeros, zeros)["params"])
    critic_tx = optax.adam(optax.exponential_decay(
        c.critic_lr, max(1, round(0.2 * config.num_steps)), 0.1, staircase=True))
    extra: dict[str, Any] = {"confounder": confounder}
    known = data.train_poisoned is not None and bool(data.train_poisoned.any())
    if known:
      extra.update({k: jnp.zeros(()) for k in TALLIES})
      everything = {**everything, "poisoned": np.asarray(data.train_poisoned, bool)}
    if c.mutual_information:
      extra.update(critic=critic_params, critic_opt=critic_tx.init(critic_params))
    opt = peer_optimizer(ctx, c.lr, {0.2: 0.1, 0.7: 0.1}, config.num_steps, c.weight_decay)
    state = classifier_state(c_vars, c_features, data.train_labels, data.num_classes, opt,
                             config.seed, extra=extra)
    state = train_phase(ctx, "cbd", state,
                        make_clean_step(model, critic, critic_tx, c.mutual_information,
                                        c.mi_weight), everything, config.num_steps)

    row = {"images_seen": (confounder_steps + config.num_steps) * min(config.batch_size, n)}
    if known:
      # Over all of f_C's steps; the weights average 1 in every batch.
      seen = float(state.extra["poisoned_seen"])
      row["cbd_poisoned_weight"] = float(state.extra["poisoned_weight"]) / seen
      row["cbd_poisoned_downweighted"] = float(state.extra["poisoned_below_one"]) / seen
    outputs = {"steps": {"cbd_confounder": confounder_steps, "cbd": config.num_steps},
               "mutual_information": bool(c.mutual_information),
               "checkpoints": {s: str(ctx.workdir / s / "checkpoints") for s in STAGES}}
    seconds = sum(stage_seconds(ctx.workdir, s) for s in STAGES)
    return DefenseOutcome("CBD", model, variables(state), ctx.inputs, row, outputs, seconds)
