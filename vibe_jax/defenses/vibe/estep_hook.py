"""VIBE's E-step inside the training loop, and what it logs."""

import functools
import logging
from typing import Callable

import jax
import ml_collections
import numpy as np

from vibe_jax import estep
from vibe_jax.data.features import FeatureData
from vibe_jax.models import VIBEModel
from vibe_jax.train import Hook, Inputs, variables

__all__ = ["EStepHook", "pseudo_label_metrics"]

_log = logging.getLogger(__name__)


def pseudo_label_metrics(labels: np.ndarray, data: FeatureData) -> dict[str, float]:
  """Agreement of pseudo-labels with the given and true labels; poisoned relabelled.

  `poisoned_relabelled` is the share of poisoned examples whose pseudo-label
  differs from their given (attack) label.
  """
  out = {"given_agreement": float(np.mean(labels == data.train_labels))}
  if data.train_true_labels is not None:
    out["true_agreement"] = float(np.mean(labels == data.train_true_labels))
  if data.train_poisoned is not None and data.train_poisoned.any():
    p = data.train_poisoned
    out["poisoned_relabelled"] = float(np.mean(labels[p] != data.train_labels[p]))
    if data.train_true_labels is not None:
      out["poisoned_true_agreement"] = float(np.mean(labels[p] == data.train_true_labels[p]))
  return out


class EStepHook(Hook):
  """Before every M-step whose index is a multiple of `config.estep.period`:
  log p over the whole training set (features recomputed in evaluation mode
  without augmentation, spec 4.2, chunk by chunk), Sinkhorn, and the labels
  replace `state.extra["pseudo_labels"]`. The first E-step (step 0) uses a uniform
  p(y|l) when `estep.uniform_first` (reference quirk 8)."""

  def __init__(self, model: VIBEModel, inputs: Inputs, c: ml_collections.ConfigDict,
               data: FeatureData, log: Callable[[dict], None], stage: str = "vibe"):
    self._c, self._data, self._log, self._stage = c, data, log, stage
    sinkhorn = dict(epsilon=c.epsilon, threshold=c.threshold,
                    max_iterations=c.max_iterations, inner_iterations=c.inner_iterations,
                    reference_iterations=c.reference_iterations)

    # The dataset is an argument, not a closure: closed-over arrays would be baked
    # into the compiled program as constants.
    @functools.partial(jax.jit, static_argnums=3)
    def run(variables_, x, y, uniform_p_yl):
      fn = lambda xs, ys: model.apply(variables_, inputs.eval(xs), ys, uniform_p_yl,
                                      method="log_joint")
      log_p = estep.dataset_log_joint(fn, x, y, chunk_size=c.chunk_size)
      return estep.pseudo_labels(log_p, model.apply(variables_, method="prior"), **sinkhorn)

    self._run = run

  def before_step(self, step, state, arrays):
    if step % self._c.period:
      return state
    result = self._run(variables(state), arrays["x"], arrays["y"],
                       step == 0 and self._c.uniform_first)
    state = state.replace(extra={**state.extra, "pseudo_labels": result.labels})
    row = {"stage": self._stage, "step": step, "event": "estep",
           "sinkhorn_iterations": int(result.iterations),
           "sinkhorn_converged": bool(result.converged),
           "sinkhorn_error": float(result.error),
           **pseudo_label_metrics(np.asarray(result.labels), self._data)}
    self._log(row)
    _log.info("[%s] E-step before step %d: %d Sinkhorn iterations (error %.1e); "
              "pseudo-labels = given %.1f%%%s%s", self._stage, step,
              row["sinkhorn_iterations"], row["sinkhorn_error"],
              100 * row["given_agreement"],
              f", = true {100 * row['true_agreement']:.1f}%" if "true_agreement" in row else "",
              f", poisoned relabelled {100 * row['poisoned_relabelled']:.1f}%"
              if "poisoned_relabelled" in row else "")
    return state
