"""VIBE's E-step inside the training loop, and what it logs."""

import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec

from vibe_jax import estep, parallel
from vibe_jax.data.features import FeatureData
from vibe_jax.data.rows import take
from vibe_jax.models import VIBEModel
from vibe_jax.train import Hook, Inference, Inputs, variables

__all__ = ["EStepHook", "pseudo_label_metrics"]

_log = logging.getLogger(__name__)


def pseudo_label_metrics(labels: np.ndarray, data: FeatureData) -> dict[str, float]:
  """Agreement of pseudo-labels with the given and true labels; poisoned relabelled.

  `poisoned_relabelled` is the share of poisoned examples whose pseudo-label
  differs from their given (attack) label. For an all-to-one attack (every
  poisoned example carries one label, the target), `clean_target_relabelled` is
  the share of the target class's clean examples whose pseudo-label is not the
  target: VIBE's failure mode on tight trigger clusters, where the target's
  prototype follows the poisoned examples and the clean ones are moved away.
  """
  out = {"given_agreement": float(np.mean(labels == data.train_labels))}
  if data.train_true_labels is not None:
    out["true_agreement"] = float(np.mean(labels == data.train_true_labels))
  if data.train_poisoned is not None and data.train_poisoned.any():
    p = data.train_poisoned
    out["poisoned_relabelled"] = float(np.mean(labels[p] != data.train_labels[p]))
    if data.train_true_labels is not None:
      out["poisoned_true_agreement"] = float(np.mean(labels[p] == data.train_true_labels[p]))
      targets = np.unique(data.train_labels[p])
      clean = ~p & (data.train_true_labels == targets[0])
      if len(targets) == 1 and clean.any():
        out["clean_target_relabelled"] = float(np.mean(labels[clean] != targets[0]))
  return out


class EStepHook(Hook):
  """Before every M-step whose index is a multiple of `config.estep.period`:
  log p over the whole training set (features recomputed in evaluation mode
  without augmentation, spec 4.2, chunk by chunk), Sinkhorn, and the labels
  replace `state.extra["pseudo_labels"]`. The first E-step (step 0) uses a uniform
  p(y|l) when `estep.uniform_first` (reference quirk 8).

  Two paths, by where the training set lives. On the devices (the source placed
  "x"): one jitted program from the images. Streamed: the backbone embeds the set
  batch by batch on the host's reads (`Inference.embed`), the features go to the
  devices sharded by rows (padded to divide them, the padding given zero mass),
  each device computes its rows of log P, and the Sinkhorn runs sharded: no device
  holds more than its share of the N x K matrix.
  """

  def __init__(self, model: VIBEModel, inputs: Inputs, c: ml_collections.ConfigDict,
               data: FeatureData, log: Callable[[dict], None], stage: str = "vibe",
               eval_batch_size: int = 256):
    self._c, self._data, self._log, self._stage = c, data, log, stage
    self._eval_batch_size = eval_batch_size
    self._model, self._inputs = model, inputs
    sinkhorn = dict(epsilon=c.epsilon, threshold=c.threshold,
                    max_iterations=c.max_iterations, inner_iterations=c.inner_iterations,
                    reference_iterations=c.reference_iterations)
    self._sinkhorn = sinkhorn

    # Through a backbone, a chunk's activations are what bounds memory: chunks of
    # images are no larger than an evaluation batch.
    chunk = c.chunk_size if model.backbone is None else min(c.chunk_size, eval_batch_size)

    # The dataset is an argument, not a closure: closed-over arrays would be baked
    # into the compiled program as constants.
    # uniform_p_yl is traced, not static: the first E-step and the later ones share
    # one compiled program.
    @jax.jit
    def run(variables_, x, y, uniform_p_yl):
      prior = model.apply(variables_, method="prior")
      if c.recompute:
        embed = lambda xs, _: model.apply(variables_, inputs.eval(xs), method="embed")
        v = estep.dataset_log_joint(embed, x, y, chunk_size=chunk)
        return self._from_features(variables_, v, y, uniform_p_yl, prior, None)
      fn = lambda xs, ys: model.apply(variables_, inputs.eval(xs), ys, uniform_p_yl,
                                      method="log_joint")
      log_p = estep.dataset_log_joint(fn, x, y, chunk_size=chunk)
      return estep.pseudo_labels(log_p, prior, solver=c.solver, **sinkhorn)

    self._run = run
    self._streamed = None  # built at the first streamed E-step (needs the mesh)

  def _from_features(self, variables_, v, y, uniform_p_yl, prior, num_rows):
    """The E-step that recomputes log P's rows from the features (`estep.recompute`)."""
    fn = lambda vs, ys: self._model.apply(variables_, vs, ys, uniform_p_yl,
                                          method="head_log_joint")
    return estep.pseudo_labels_from_features(fn, v, y, prior, num_rows=num_rows,
                                             **self._sinkhorn)

  def _streamed_run(self, mesh):
    """The jitted E-step from row-sharded features (the streamed path)."""
    model, c, rows = self._model, self._c, PartitionSpec(parallel.DATA_AXIS)

    @functools.partial(jax.jit, static_argnums=4)
    def run(variables_, v, y, uniform_p_yl, num_rows):
      prior = model.apply(variables_, method="prior")
      if c.recompute:
        result = self._from_features(variables_, v, y, uniform_p_yl, prior, num_rows)
        return result._replace(labels=jax.lax.with_sharding_constraint(
            result.labels, parallel.replicated(mesh)))

      def local_log_p(v_, y_):
        fn = lambda vs, ys: model.apply(variables_, vs, ys, uniform_p_yl,
                                        method="head_log_joint")
        return estep.dataset_log_joint(fn, v_, y_, chunk_size=c.chunk_size)

      # shard_map: each device runs the chunked loop over its own rows; under plain
      # jit the loop's dynamic slices would gather rows across devices.
      log_p = jax.shard_map(local_log_p, mesh=mesh, in_specs=(rows, rows), out_specs=rows,
                            check_vma=False)(v, y)
      result = estep.pseudo_labels(log_p, prior, num_rows=num_rows, solver=c.solver,
                                   **self._sinkhorn)
      # The M-step gathers labels at any row: every device keeps all N int32s.
      return result._replace(labels=jax.lax.with_sharding_constraint(
          result.labels, parallel.replicated(mesh)))

    return run

  def _streamed_estep(self, state, uniform):
    """Features of the whole training set (read on demand, each process its own
    block of rows), as one array sharded by rows, then the sharded E-step."""
    mesh = parallel.data_mesh()
    if self._streamed is None:
      self._streamed = (self._streamed_run(mesh), Inference(self._model, self._inputs,
                                                                 self._eval_batch_size))
    run, inference = self._streamed
    x, labels = self._data.train_features, self._data.train_labels
    n, devices = len(labels), mesh.shape[parallel.DATA_AXIS]
    padded = n + (-n % devices)  # zero-mass padding rows divide N over the devices
    mine = np.arange(padded)[parallel.process_rows(padded, mesh)]
    real = mine[mine < n]
    features = inference.embed(variables(state), take(x, np.isin(np.arange(n), real)))
    pad = len(mine) - len(real)
    local = {"v": np.concatenate([features, np.zeros((pad, features.shape[1]), np.float32)]),
             "y": np.concatenate([labels[real], np.zeros(pad, labels.dtype)])}
    arrays = parallel.global_batch(local, mesh)
    result = run(variables(state), arrays["v"], arrays["y"], uniform, n)
    return result._replace(labels=result.labels[:n])

  def period(self):
    return self._c.period

  def before_step(self, step, state, arrays):
    if step % self._c.period:
      return state
    uniform = step == 0 and self._c.uniform_first
    if "x" in arrays:
      result = self._run(variables(state), arrays["x"], arrays["y"], uniform)
    else:
      result = self._streamed_estep(state, uniform)
    labels = jnp.asarray(result.labels, jnp.int32)
    state = state.replace(extra={**state.extra, "pseudo_labels": labels})
    row = {"stage": self._stage, "step": step, "event": "estep",
           "sinkhorn_iterations": int(result.iterations),
           "sinkhorn_converged": bool(result.converged),
           "sinkhorn_error": float(result.error),
           **pseudo_label_metrics(parallel.to_host(result.labels), self._data)}
    self._log(row)
    _log.info("[%s] E-step before step %d: %d Sinkhorn iterations (error %.1e); "
              "pseudo-labels = given %.1f%%%s%s", self._stage, step,
              row["sinkhorn_iterations"], row["sinkhorn_error"],
              100 * row["given_agreement"],
              f", = true {100 * row['true_agreement']:.1f}%" if "true_agreement" in row else "",
              f", poisoned relabelled {100 * row['poisoned_relabelled']:.1f}%"
              if "poisoned_relabelled" in row else "")
    return state
