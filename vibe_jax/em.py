"""The EM loop of VIBE, and the no-defense baseline, on feature matrices.

`train_and_evaluate(config, workdir)` reads the data, optionally trains the
no-defense baseline (the same classifier, cross-entropy on the given labels), then
VIBE: an E-step every `estep.period` M-steps (uniform p(y|l) at the first one, as
the reference, switchable), M-steps on shuffled batches. Each stage checkpoints in
`workdir/<stage>/checkpoints` and resumes from there. Results go to
`workdir/results.json`, `workdir/results.md`, `workdir/metrics.jsonl` and
`workdir/curves.png`.

Deviation from the reference: batches have a fixed size (the last incomplete batch
of an epoch is skipped rather than used), so the jitted step compiles once.
"""

import functools
import json
import logging
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vibe_jax import estep, mstep, sharding
from vibe_jax.checkpoint import Checkpointer
from vibe_jax.data import FeatureData, badnets_digits, load_npz
from vibe_jax.errors import InputError
from vibe_jax.models import VIBEHead, VIBEModel, init_head_params
from vibe_jax.provenance import provenance
from vibe_jax import report

__all__ = ["load_data", "build_model", "train_and_evaluate", "fit", "evaluate"]

_log = logging.getLogger(__name__)


def load_data(config: ml_collections.ConfigDict) -> FeatureData:
  """The dataset named by `config.data` ("digits" or "npz")."""
  if config.data.source == "digits":
    data = badnets_digits(seed=config.seed, rate=config.data.poison_rate,
                          target=config.data.target, patch=config.data.patch)
  elif config.data.source == "npz":
    if not config.data.path:
      raise InputError("config.data.path must name an .npz file when "
                       "config.data.source='npz'")
    data = load_npz(config.data.path)
  else:
    raise InputError(f"unknown config.data.source {config.data.source!r}; "
                     "use 'digits' or 'npz'")
  if config.data.l2_normalize:
    # Spec 5.6 / quirk 3: the reference uses unit-norm cached features on every run
    # after the first; this switch picks that behaviour.
    unit = lambda a: None if a is None else a / np.maximum(
        np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    data = data._replace(train_features=unit(data.train_features),
                         test_features=unit(data.test_features),
                         asr_features=unit(data.asr_features))
  return data


def build_model(config: ml_collections.ConfigDict, num_classes: int, dim: int) -> VIBEModel:
  """VIBEModel on features with the head of `config.model`."""
  variant = config.model.variant
  if variant not in ("A", "F"):
    raise InputError(f"unknown config.model.variant {variant!r}; use 'A' or 'F'")
  head = VIBEHead(num_classes=num_classes, dim=dim, kappa=config.model.kappa,
                  nu=config.model.nu, prior_temperature=config.model.prior_temperature,
                  conditioned=variant == "F")
  return VIBEModel(head=head)


def _optimizer(config: ml_collections.ConfigDict):
  frozen = tuple(g for g in mstep.GROUPS if config.optim.frozen.get(g, False))
  return mstep.make_optimizer(dict(config.optim.lr), momentum=config.optim.momentum,
                              weight_decay=config.optim.weight_decay, frozen=frozen)


class _Batches:
  """Fixed-size batches of indices from a per-epoch permutation of (seed, epoch).

  Any step's batch is a function of (seed, step) alone, so a resumed run reads
  exactly the batches an uninterrupted one would.
  """

  def __init__(self, n: int, batch_size: int, seed: int):
    self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
    self.per_epoch = self.n // self.batch_size
    self._epoch, self._perm = -1, None

  def __call__(self, step: int) -> np.ndarray:
    epoch, offset = divmod(step, self.per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
    start = offset * self.batch_size
    return self._perm[start:start + self.batch_size].astype(np.int32)


def evaluate(model: VIBEModel, state: mstep.TrainState, features: np.ndarray,
             labels: np.ndarray, batch_size: int = 4096) -> float:
  """Accuracy of argmax p(l|x) on (features, labels)."""
  if features is None or len(features) == 0:
    return float("nan")
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x), axis=1))
  correct = 0
  for i in range(0, len(features), batch_size):
    predicted = predict(variables, features[i:i + batch_size])
    correct += int(jnp.sum(predicted == labels[i:i + batch_size]))
  return correct / len(features)


def estep_metrics(labels: np.ndarray, data: FeatureData) -> dict[str, float]:
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
  return out


def _make_estep(model: VIBEModel, config: ml_collections.ConfigDict):
  """The jitted E-step `(params, features, labels, uniform_p_yl) -> PseudoLabels`."""
  sinkhorn = dict(epsilon=config.estep.epsilon, threshold=config.estep.threshold,
                  max_iterations=config.estep.max_iterations,
                  inner_iterations=config.estep.inner_iterations,
                  reference_iterations=config.estep.reference_iterations)

  # The dataset is an argument, not a closure: closed-over arrays would be baked
  # into the compiled program as constants.
  @functools.partial(jax.jit, static_argnums=3)
  def run(params, features, labels, uniform_p_yl):
    variables = {"params": params}
    fn = lambda x, y: model.apply(variables, x, y, uniform_p_yl, method="log_joint")
    log_p = estep.dataset_log_joint(fn, features, labels,
                                    chunk_size=config.estep.chunk_size)
    prior = model.apply(variables, method="prior")
    return estep.pseudo_labels(log_p, prior, **sinkhorn)

  return run


def fit(
    *,
    name: str,
    state: mstep.TrainState,
    step_fn: Callable,
    data: FeatureData,
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    log: Callable[[dict], None],
    estep_fn: Optional[Callable] = None,
) -> mstep.TrainState:
  """Runs `config.num_steps` steps of `step_fn` from the stage's last checkpoint.

  With `estep_fn`, an E-step runs before every M-step whose index is a multiple of
  `config.estep.period`, and its labels replace `state.pseudo_labels`.
  """
  ckpt = Checkpointer(workdir / name / "checkpoints",
                      max_to_keep=config.checkpoint.max_to_keep)
  state, restored = ckpt.restore_or(state)
  start = int(state.step)
  if restored is not None:
    _log.info("[%s] resuming from the checkpoint at step %d", name, start)
  mesh = sharding.data_mesh()
  everywhere, rows = sharding.replicated(mesh), sharding.batch_rows(mesh)
  batches = _Batches(len(data.train_labels), config.batch_size, config.seed)
  sharding.check_batch_size(batches.batch_size, mesh)
  state = jax.device_put(state, everywhere)
  features = jax.device_put(data.train_features, everywhere)
  given = jax.device_put(data.train_labels, everywhere)

  @functools.partial(jax.jit, donate_argnums=0,
                     in_shardings=(everywhere, everywhere, everywhere, rows),
                     out_shardings=(everywhere, everywhere))
  def step(state, features, given, index):
    batch = {"x": features[index], "y": given[index], "index": index}
    return step_fn(state, batch)

  num_steps = config.num_steps
  window = []  # metrics of the steps since the last log line, averaged there
  bar = tqdm.tqdm(range(start, num_steps), desc=name, initial=start, total=num_steps,
                  mininterval=1.0, disable=not config.progress_bar)
  for t in bar:
    if estep_fn is not None and t % config.estep.period == 0:
      result = estep_fn(state.params, features, given,
                        t == 0 and config.estep.uniform_first)
      state = state.replace(pseudo_labels=result.labels)
      row = {"stage": name, "step": t, "event": "estep",
             "sinkhorn_iterations": int(result.iterations),
             "sinkhorn_converged": bool(result.converged),
             "sinkhorn_error": float(result.error),
             **estep_metrics(np.asarray(result.labels), data)}
      log(row)
      _log.info("[%s] E-step before step %d: %d Sinkhorn iterations (error %.1e); "
                "pseudo-labels = given %.1f%%%s%s", name, t, row["sinkhorn_iterations"],
                row["sinkhorn_error"], 100 * row["given_agreement"],
                f", = true {100 * row['true_agreement']:.1f}%"
                if "true_agreement" in row else "",
                f", poisoned relabelled {100 * row['poisoned_relabelled']:.1f}%"
                if "poisoned_relabelled" in row else "")
    state, metrics = step(state, features, given, batches(t))
    window.append(metrics)  # device arrays: no host sync until the log line
    done = t + 1
    if done % config.log_every == 0 or done == num_steps:
      means = jax.tree_util.tree_map(lambda *v: float(jnp.mean(jnp.stack(v))), *window)
      window = []
      row = {"stage": name, "step": done, "event": "train", **means}
      bar.set_postfix(loss=f"{row['loss']:.4f}")
      log(row)
    if done % config.checkpoint.every == 0 or done == num_steps:
      ckpt.save(done, state)
  ckpt.close()
  return state


def _initial_state(model, data, tx, rng) -> mstep.TrainState:
  head = init_head_params(data.train_features, data.train_labels, data.num_classes, rng)
  params = {"head": head}
  return mstep.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                          opt_state=tx.init(params),
                          pseudo_labels=jnp.asarray(data.train_labels, jnp.int32))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: Optional[FeatureData] = None) -> dict[str, Any]:
  """Trains the baseline (if enabled) and VIBE; writes and returns the results.

  Args:
    config: a config from configs/.
    workdir: where checkpoints, metrics and results go.
    data: in-memory features; by default `config.data` names them.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  log = report.JsonLines(workdir / "metrics.jsonl")
  data = load_data(config) if data is None else data.validate()
  model = build_model(config, data.num_classes, data.train_features.shape[1])
  tx = _optimizer(config)
  rng = jax.random.PRNGKey(config.seed)
  rows = []

  if config.baseline.enabled:
    began = time.time()
    state = _initial_state(model, data, tx, rng)
    state = fit(name="baseline", state=state, step_fn=mstep.make_baseline_step(model, tx),
                data=data, config=config, workdir=workdir, log=log)
    rows.append({"method": "no defense",
                 "clean_acc": evaluate(model, state, data.test_features, data.test_labels),
                 "asr": evaluate(model, state, data.asr_features, data.asr_labels),
                 "wall_time_s": round(time.time() - began, 2)})

  began = time.time()
  state = _initial_state(model, data, tx, rng)
  estep_fn = _make_estep(model, config)
  state = fit(name="vibe", state=state, step_fn=mstep.make_vibe_step(model, tx),
              data=data, config=config, workdir=workdir, log=log, estep_fn=estep_fn)
  labels = np.asarray(state.pseudo_labels)
  np.save(workdir / "pseudo_labels.npy", labels)
  vibe_row = {"method": f"VIBE-{config.model.variant}",
              "clean_acc": evaluate(model, state, data.test_features, data.test_labels),
              "asr": evaluate(model, state, data.asr_features, data.asr_labels),
              "wall_time_s": round(time.time() - began, 2),
              **{f"pseudo_{k}": v for k, v in estep_metrics(labels, data).items()}}
  rows.append(vibe_row)

  results = {"clean_acc": vibe_row["clean_acc"], "asr": vibe_row["asr"],
             "seed": config.seed, "rows": rows, "provenance": provenance(),
             "config": json.loads(config.to_json_best_effort())}
  report.write_results(workdir, results)
  log.close()
  report.plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
  return results
