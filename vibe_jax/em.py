"""The EM loop of VIBE, and the no-defense baseline, on features or images.

`train_and_evaluate(config, workdir)` reads the data (`vibe_jax.data.load`),
optionally trains the no-defense baseline (the same classifier, cross-entropy on
the given labels), then VIBE: an E-step every `estep.period` M-steps (uniform
p(y|l) at the first one, as the reference, switchable), M-steps on shuffled batches.
With `config.model.backbone` the inputs are poisoned images, augmented inside the
jitted step (VIBE-SS when the backbone trains, spec 5); without, feature vectors.
Each stage checkpoints in `workdir/<stage>/checkpoints` and resumes from there.
Results go to `workdir/results.json`, `results.md`, `metrics.jsonl`, `curves.png`.

Deviation from the reference: batches have a fixed size (the last incomplete batch
of an epoch is skipped rather than used), so the jitted step compiles once.
"""

import dataclasses
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
import optax
import tqdm

from vibe_jax import estep, mstep, report, sharding
from vibe_jax.checkpoint import Checkpointer
from vibe_jax.data import device
from vibe_jax.data.batches import IndexBatches
from vibe_jax.data.features import FeatureData
from vibe_jax.data.load import load_data
from vibe_jax.data.sources import DatasetInfo
from vibe_jax.errors import InputError
from vibe_jax.models import VIBEHead, VIBEModel, init_head_params
from vibe_jax.models.backbones import build_backbone, feature_dim
from vibe_jax.provenance import provenance

__all__ = ["Inputs", "build_model", "initial_variables", "train_and_evaluate", "fit",
           "evaluate", "embed"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """How stored inputs become model inputs: identity for features; augmentation
  (training) or normalisation (evaluation) for uint8 images, then, with
  `resize`, a bilinear resize to resize x resize (the reference feeds CIFAR to
  DINOv2 this way: normalised, then resized to 224, spec 8.3)."""

  info: Optional[DatasetInfo] = None
  resize: int = 0

  def _sized(self, x: jax.Array) -> jax.Array:
    if not self.resize or x.shape[1] == self.resize:
      return x
    return jax.image.resize(x, (x.shape[0], self.resize, self.resize, x.shape[3]),
                            "bilinear", antialias=False)

  def train(self, key: jax.Array, x: jax.Array) -> jax.Array:
    return x if self.info is None else self._sized(device.augment(key, x, self.info))

  def eval(self, x: jax.Array) -> jax.Array:
    return x if self.info is None else self._sized(device.normalize(x, self.info))


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                dim: Optional[int] = None) -> VIBEModel:
  """VIBEModel: `config.model.backbone` (if any) and the head of `config.model`."""
  variant = config.model.variant
  if variant not in ("A", "F"):
    raise InputError(f"unknown config.model.variant {variant!r}; use 'A' or 'F'")
  backbone = None
  if config.model.get("backbone"):
    try:
      backbone, dim = build_backbone(config.model.backbone), feature_dim(
          config.model.backbone)
    except ValueError as error:
      raise InputError(str(error)) from error
  head = VIBEHead(num_classes=num_classes, dim=dim, kappa=config.model.kappa,
                  nu=config.model.nu, prior_temperature=config.model.prior_temperature,
                  conditioned=variant == "F")
  return VIBEModel(head=head, backbone=backbone)


def _optimizer(config: ml_collections.ConfigDict, baseline: bool = False):
  frozen = tuple(g for g in mstep.GROUPS if config.optim.frozen.get(g, False))
  lrs = dict(config.optim.lr)
  if baseline and config.baseline.get("lr"):
    # The standard supervised recipe: one learning rate, cosine decay.
    lrs = {g: optax.cosine_decay_schedule(config.baseline.lr, config.num_steps)
           for g in mstep.GROUPS}
  return mstep.make_optimizer(lrs, momentum=config.optim.momentum,
                              weight_decay=config.optim.weight_decay, frozen=frozen)


def _variables(state: mstep.TrainState) -> dict[str, Any]:
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def embed(model: VIBEModel, variables: dict[str, Any], inputs: np.ndarray,
          prep: Inputs, batch_size: int = 1024) -> np.ndarray:
  """Backbone features of `inputs` in evaluation mode (no augmentation), (N, D)."""
  fn = jax.jit(lambda v, x: model.apply(v, prep.eval(x), method="embed"))
  return np.concatenate([np.asarray(fn(variables, inputs[i:i + batch_size]))
                         for i in range(0, len(inputs), batch_size)])


def evaluate(model: VIBEModel, state: mstep.TrainState, inputs: Optional[np.ndarray],
             labels: Optional[np.ndarray], prep: Inputs = Inputs(),
             batch_size: int = 1024) -> float:
  """Accuracy of argmax p(l|x) on (inputs, labels)."""
  if inputs is None or len(inputs) == 0:
    return float("nan")
  predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, prep.eval(x)), axis=1))
  variables = _variables(state)
  correct = 0
  for i in range(0, len(inputs), batch_size):
    predicted = predict(variables, inputs[i:i + batch_size])
    correct += int(jnp.sum(predicted == labels[i:i + batch_size]))
  return correct / len(inputs)


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
    if data.train_true_labels is not None:
      out["poisoned_true_agreement"] = float(np.mean(labels[p] == data.train_true_labels[p]))
  return out


def _make_estep(model: VIBEModel, config: ml_collections.ConfigDict, prep: Inputs):
  """The jitted E-step `(variables, inputs, labels, uniform_p_yl) -> PseudoLabels`.

  With a backbone, features are recomputed over the whole training set in
  evaluation mode without augmentation (spec 4.2), chunk by chunk.
  """
  sinkhorn = dict(epsilon=config.estep.epsilon, threshold=config.estep.threshold,
                  max_iterations=config.estep.max_iterations,
                  inner_iterations=config.estep.inner_iterations,
                  reference_iterations=config.estep.reference_iterations)

  # The dataset is an argument, not a closure: closed-over arrays would be baked
  # into the compiled program as constants.
  @functools.partial(jax.jit, static_argnums=3)
  def run(variables, inputs, labels, uniform_p_yl):
    fn = lambda x, y: model.apply(variables, prep.eval(x), y, uniform_p_yl,
                                  method="log_joint")
    log_p = estep.dataset_log_joint(fn, inputs, labels, chunk_size=config.estep.chunk_size)
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
    prep: Inputs = Inputs(),
    estep_fn: Optional[Callable] = None,
) -> mstep.TrainState:
  """Runs `config.num_steps` steps of `step_fn` from the stage's last checkpoint.

  With `estep_fn`, an E-step runs before every M-step whose index is a multiple of
  `config.estep.period`, and its labels replace `state.pseudo_labels`. Step t
  augments with the key fold_in(seed, t), so a resumed run repeats it exactly.
  """
  ckpt = Checkpointer(workdir / name / "checkpoints",
                      max_to_keep=config.checkpoint.max_to_keep)
  state, restored = ckpt.restore_or(state)
  start = int(state.step)
  if restored is not None:
    _log.info("[%s] resuming from the checkpoint at step %d", name, start)
  mesh = sharding.data_mesh()
  everywhere, rows = sharding.replicated(mesh), sharding.batch_rows(mesh)
  batches = IndexBatches(len(data.train_labels), config.batch_size, config.seed)
  sharding.check_batch_size(batches.batch_size, mesh)
  state = jax.device_put(state, everywhere)
  inputs = jax.device_put(data.train_features, everywhere)
  given = jax.device_put(data.train_labels, everywhere)
  base_key = jax.random.PRNGKey(config.seed)

  @functools.partial(jax.jit, donate_argnums=0,
                     in_shardings=(everywhere, everywhere, everywhere, rows),
                     out_shardings=(everywhere, everywhere))
  def step(state, inputs, given, index):
    key = jax.random.fold_in(base_key, state.step)
    batch = {"x": prep.train(key, inputs[index]), "y": given[index], "index": index}
    return step_fn(state, batch)

  num_steps = config.num_steps
  window = []  # metrics of the steps since the last log line, averaged there
  bar = tqdm.tqdm(range(start, num_steps), desc=name, initial=start, total=num_steps,
                  mininterval=1.0, disable=not config.progress_bar)
  for t in bar:
    if estep_fn is not None and t % config.estep.period == 0:
      result = estep_fn(_variables(state), inputs, given,
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
    state, metrics = step(state, inputs, given, batches(t))
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


def initial_variables(model: VIBEModel, data: FeatureData, config, prep: Inputs
                      ) -> dict[str, Any]:
  """The model's variables with the backbone random or from
  `config.model.backbone_weights` (head parameters are placeholders)."""
  init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
  variables = model.init(init_rng, prep.eval(jnp.asarray(data.train_features[:1])))
  variables = jax.tree_util.tree_map(jnp.asarray, dict(variables))
  weights = config.model.get("backbone_weights")
  if weights and model.backbone is not None:
    from vibe_jax.models.convert import load_variables  # pylint: disable=g-import-not-at-top
    loaded = load_variables(weights)
    variables["params"] = {**variables["params"],
                           "backbone": jax.tree_util.tree_map(jnp.asarray, loaded["params"])}
    if "batch_stats" in loaded:
      variables["batch_stats"] = {"backbone": jax.tree_util.tree_map(
          jnp.asarray, loaded["batch_stats"])}
  return variables


def _initial_features(model: VIBEModel, data: FeatureData, config, prep: Inputs):
  """(`initial_variables`, training features under them): what prototype
  initialisation and Leiden filtering both start from."""
  variables = initial_variables(model, data, config, prep)
  features = (embed(model, variables, data.train_features, prep)
              if model.backbone is not None else data.train_features)
  return variables, features


def _initial_state(variables, features: np.ndarray, data: FeatureData, tx, config
                   ) -> mstep.TrainState:
  """mu = eta = class means of the training `features` under the given labels and
  rho ~ N(0, I) (spec 3.8) on top of `variables`."""
  rho_rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]
  params = {**variables["params"],
            "head": init_head_params(features, data.train_labels, data.num_classes, rho_rng)}
  return mstep.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params),
                          pseudo_labels=jnp.asarray(data.train_labels, jnp.int32))


def _leiden_filter(features, data, config, workdir, log):
  """Spec 9: drops at most one outlier cluster of the initial `features`; returns
  (data, features) without it and the counts removed; the kept original indices go
  to `workdir/leiden.json`."""
  from vibe_jax import leiden  # pylint: disable=g-import-not-at-top

  keep, report_ = leiden.outlier_cluster_keep(
      features, data.train_labels, delta=config.leiden.delta,
      num_neighbors=config.leiden.num_neighbors, seed=config.seed)
  removed_poisoned = (int((~keep & data.train_poisoned).sum())
                      if data.train_poisoned is not None else None)
  report_.update(removed_poisoned=removed_poisoned)
  (workdir / "leiden.json").write_text(json.dumps(
      {**report_, "kept_indices": np.flatnonzero(keep).tolist()}))
  log({"stage": "vibe", "step": 0, "event": "leiden", **{
      k: v for k, v in report_.items() if k != "scores"}})
  _log.info("[leiden] %d clusters, removed cluster %s: %d examples (%s poisoned)",
            report_["clusters"], report_["removed_cluster"], report_["removed_examples"],
            removed_poisoned)
  pick = lambda a: None if a is None else a[keep]
  data = data._replace(train_features=data.train_features[keep],
                       train_labels=data.train_labels[keep],
                       train_true_labels=pick(data.train_true_labels),
                       train_poisoned=pick(data.train_poisoned))
  return data, features[keep], report_["removed_examples"], removed_poisoned


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: Optional[FeatureData] = None) -> dict[str, Any]:
  """Trains the baseline (if enabled) and VIBE; writes and returns the results.

  Args:
    config: a config from configs/.
    workdir: where checkpoints, metrics and results go.
    data: in-memory features; by default `config.data` names the data.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  origin = provenance()  # at the start: the code that runs, not the code at the end
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  log = report.JsonLines(workdir / "metrics.jsonl")
  info = None
  if data is None:
    data, info = load_data(config, workdir)
  else:
    data = data.validate()
  if info is not None and config.model.get("frozen_features"):
    # FM style: a frozen backbone's features, extracted once and cached.
    from vibe_jax import extract  # pylint: disable=g-import-not-at-top
    data, info = extract.cached_features(config, data, info, workdir), None
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.model.backbone = ""
  prep = Inputs(info, config.model.get("input_size", 0))
  dim = None if data.is_images else data.train_features.shape[1]
  model = build_model(config, data.num_classes, dim)
  if data.is_images != (model.backbone is not None):
    raise InputError("images need config.model.backbone, feature vectors must not have "
                     "one")
  rows = []

  def row(method, state, began, **extra):
    return {"method": method,
            "clean_acc": evaluate(model, state, data.test_features, data.test_labels, prep),
            "asr": evaluate(model, state, data.asr_features, data.asr_labels, prep),
            "wall_time_s": round(time.time() - began, 2), **extra}

  if config.baseline.enabled:
    began = time.time()
    tx = _optimizer(config, baseline=True)
    state = _initial_state(*_initial_features(model, data, config, prep), data, tx, config)
    state = fit(name="baseline", state=state, step_fn=mstep.make_baseline_step(model, tx),
                data=data, config=config, workdir=workdir, log=log, prep=prep)
    rows.append(row("no defense", state, began))

  stage_times = {}
  if config.get("ssl") and config.ssl.enabled:
    from vibe_jax import ssl  # pylint: disable=g-import-not-at-top
    if info is None:
      raise InputError("config.ssl needs image data (config.data.source='images')")
    began = time.time()
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.model.backbone_weights = str(ssl.pretrain(config, workdir, data, info, log))
    stage_times["ssl_wall_time_s"] = round(time.time() - began, 2)
  began = time.time()
  variables, features = _initial_features(model, data, config, prep)
  if config.get("leiden") and config.leiden.enabled:
    (data, features, stage_times["leiden_removed"],
     stage_times["leiden_removed_poisoned"]) = _leiden_filter(features, data, config,
                                                              workdir, log)
  tx = _optimizer(config)
  state = _initial_state(variables, features, data, tx, config)
  state = fit(name="vibe", state=state, step_fn=mstep.make_vibe_step(model, tx),
              data=data, config=config, workdir=workdir, log=log, prep=prep,
              estep_fn=_make_estep(model, config, prep))
  labels = np.asarray(state.pseudo_labels)
  np.save(workdir / "pseudo_labels.npy", labels)
  rows.append(row(f"VIBE-{config.model.variant}", state, began, **stage_times,
                  **{f"pseudo_{k}": v for k, v in estep_metrics(labels, data).items()}))

  results = {"clean_acc": rows[-1]["clean_acc"], "asr": rows[-1]["asr"],
             "seed": config.seed, "rows": rows, "provenance": origin,
             "config": json.loads(config.to_json_best_effort())}
  report.write_results(workdir, results)
  log.close()
  report.plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
  return results
