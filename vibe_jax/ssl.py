"""Self-supervised pretraining of the backbone on the poisoned training set.

`config.ssl.method`: "all4one" (the reference's, `vibe_jax.all4one`) or "simclr"
(NT-Xent between two views, a solo-learn style projector Linear-BN-ReLU-Linear, 2048
hidden, 256 out). Both use spec 8.2's augmentations (`vibe_jax.data.ssl_augment`)
and LARS with warm-up and cosine decay, biases and norms excluded from weight decay
and adaptation. A kNN monitor (k = 20, cosine similarity, weights exp(sim / 0.07))
on the clean test set is logged every `ssl.knn_every` steps. The stage checkpoints
in `workdir/ssl/checkpoints`, resumes from there, and writes the backbone's
variables to `workdir/ssl/backbone.msgpack` for VIBE-SS to fine-tune.
"""

import functools
import logging
import pathlib
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from vibe_jax import sharding
from vibe_jax.checkpoint import Checkpointer
from vibe_jax.data import device
from vibe_jax.data.batches import IndexBatches
from vibe_jax.data.features import FeatureData
from vibe_jax.data.sources import DatasetInfo
from vibe_jax.data.ssl_augment import two_views
from vibe_jax.models.backbones import build_backbone
from vibe_jax.models.convert import save_variables

__all__ = ["SimCLR", "nt_xent", "knn_accuracy", "SSLState", "lars", "make_ssl_step",
           "pretrain"]

_log = logging.getLogger(__name__)


class SimCLR(nn.Module):
  """Backbone plus projector; returns the projections of a batch."""

  backbone: nn.Module
  hidden: int = 2048
  out: int = 256

  def embed(self, x, train: bool = False):
    return self.backbone(x, train=train)

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = self.backbone(x, train=train)
    h = nn.Dense(self.hidden, name="proj_0")(h)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     name="proj_bn")(h)
    return nn.Dense(self.out, name="proj_1")(nn.relu(h))


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """SimCLR's loss: each view must pick its partner among the other 2B - 1."""
  z = jnp.concatenate([z1, z2])
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  n = z1.shape[0]
  sim = z @ z.T / temperature
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return optax.softmax_cross_entropy_with_integer_labels(sim, partner).mean()


def knn_accuracy(train_feats: np.ndarray, train_labels: np.ndarray,
                 test_feats: np.ndarray, test_labels: np.ndarray, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None) -> float:
  """Weighted kNN accuracy on cosine similarity (the usual SSL monitor)."""
  num_classes = num_classes or int(train_labels.max()) + 1
  unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  train_feats, test_feats = unit(train_feats), unit(test_feats)
  correct = 0
  for start in range(0, len(test_feats), 1024):
    sim = test_feats[start:start + 1024] @ train_feats.T
    k_eff = min(k, sim.shape[1])
    top = np.argpartition(-sim, k_eff - 1, axis=1)[:, :k_eff]
    weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
    votes = np.zeros((len(sim), num_classes))
    np.add.at(votes, (np.arange(len(sim))[:, None], train_labels[top]), weights)
    correct += int(np.sum(votes.argmax(1) == test_labels[start:start + 1024]))
  return correct / len(test_feats)


@flax.struct.dataclass
class SSLState:
  """step, params, batch_stats, opt_state of the SSL model, and the method's own
  state in `extra` (All4One: momentum encoder and queue)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any = flax.struct.field(default_factory=dict)


def lars(c: ml_collections.ConfigDict, peak_lr: float) -> optax.GradientTransformation:
  """LARS (trust coefficient 0.02, momentum 0.9) with linear warm-up and cosine decay
  to `c.num_steps`; biases and normalisation parameters are excluded from weight
  decay and from the trust ratio, as in solo-learn."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=c.warmup_steps,
      decay_steps=max(c.num_steps, c.warmup_steps + 1))
  mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
  return optax.lars(schedule, weight_decay=c.weight_decay, weight_decay_mask=mask,
                    trust_coefficient=0.02, trust_ratio_mask=mask, momentum=0.9)


def _optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return lars(c, c.lr * c.batch_size / 256)


def make_ssl_step(model: SimCLR, tx, info: DatasetInfo, temperature: float
                  ) -> Callable[[SSLState, jax.Array, jax.Array], tuple[SSLState, dict]]:
  """The pure SimCLR step `(state, key, uint8 images) -> (state, metrics)`."""

  def step(state, key, images):
    x1, x2 = two_views(key, images, info)

    def loss_fn(params):
      z, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                               jnp.concatenate([x1, x2]), train=True,
                               mutable=["batch_stats"])
      n = images.shape[0]
      return nt_xent(z[:n], z[n:], temperature), updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=stats, opt_state=opt_state), {"loss": loss}

  return step


def pretrain(config: ml_collections.ConfigDict, workdir: pathlib.Path, data: FeatureData,
             info: DatasetInfo, log: Callable[[dict], None]) -> pathlib.Path:
  """Runs (or resumes) SimCLR on the poisoned training images; returns the path of
  the backbone's variables."""
  c = config.ssl
  out_path = workdir / "ssl" / "backbone.msgpack"
  init, raw_step, backbone_of, model = _method(config, info)
  rng = jax.random.PRNGKey(config.seed + 1)
  state = init(rng, device.normalize(jnp.asarray(data.train_features[:2]), info))
  ckpt = Checkpointer(workdir / "ssl" / "checkpoints", max_to_keep=config.checkpoint.max_to_keep)
  state, restored = ckpt.restore_or(state)
  start = int(state.step)
  if restored is not None:
    _log.info("[ssl] resuming from the checkpoint at step %d", start)
  mesh = sharding.data_mesh()
  everywhere, rows = sharding.replicated(mesh), sharding.batch_rows(mesh)
  batch_size = min(c.batch_size, len(data.train_labels))
  sharding.check_batch_size(batch_size, mesh)
  state = jax.device_put(state, everywhere)
  images = jax.device_put(data.train_features, everywhere)
  base_key = jax.random.PRNGKey(config.seed + 2)

  @functools.partial(jax.jit, donate_argnums=0,
                     in_shardings=(everywhere, everywhere, rows),
                     out_shardings=(everywhere, everywhere))
  def step(state, images, index):
    return raw_step(state, jax.random.fold_in(base_key, state.step), images[index])

  from vibe_jax.em import Inputs, embed  # pylint: disable=g-import-not-at-top

  features = lambda v, x: embed(model, v, x, Inputs(info))
  batches = IndexBatches(len(data.train_labels), batch_size, (config.seed, 0x551))
  window = []
  bar = tqdm.tqdm(range(start, c.num_steps), desc="ssl", initial=start, total=c.num_steps,
                  mininterval=1.0, disable=not config.progress_bar)
  for t in bar:
    state, metrics = step(state, images, batches(t))
    window.append(metrics)
    done = t + 1
    if done % config.log_every == 0 or done == c.num_steps:
      means = jax.tree_util.tree_map(lambda *v: float(jnp.mean(jnp.stack(v))), *window)
      row = {"stage": "ssl", "step": done, "event": "train", **means}
      window = []
      if c.knn_every and (done % c.knn_every == 0 or done == c.num_steps):
        v = {"params": state.params, "batch_stats": state.batch_stats}
        row["knn_acc"] = knn_accuracy(features(v, data.train_features), data.train_labels,
                                      features(v, data.test_features), data.test_labels,
                                      num_classes=data.num_classes)
        _log.info("[ssl] step %d: loss %.4f, kNN accuracy on the clean test set %.1f%%",
                  done, row["loss"], 100 * row["knn_acc"])
      bar.set_postfix(loss=f"{row['loss']:.3f}")
      log(row)
    if done % config.checkpoint.every == 0 or done == c.num_steps:
      ckpt.save(done, state)
  ckpt.close()
  save_variables(jax.device_get(backbone_of(state)), str(out_path))
  return out_path


def _method(config: ml_collections.ConfigDict, info: DatasetInfo):
  """(init(rng, sample) -> SSLState, step, backbone variables of a state, model)."""
  c = config.ssl
  backbone = build_backbone(config.model.backbone)
  if c.method == "simclr":
    model = SimCLR(backbone, c.proj_hidden, c.proj_dim)
    tx = _optimizer(c)

    def init(rng, sample):
      variables = model.init(rng, sample)
      return SSLState(jnp.zeros((), jnp.int32), variables["params"],
                      variables["batch_stats"], tx.init(variables["params"]))

    backbone_of = lambda s: {"params": s.params["backbone"],
                             "batch_stats": s.batch_stats["backbone"]}
    return init, make_ssl_step(model, tx, info, c.temperature), backbone_of, model
  if c.method == "all4one":
    from vibe_jax import all4one  # pylint: disable=g-import-not-at-top

    batch = min(c.batch_size, c.queue_size)
    if c.queue_size % batch:
      raise ValueError(f"config.ssl.queue_size {c.queue_size} must be a multiple of the "
                       f"batch size {batch}")
    model = all4one.All4One(backbone, c.proj_hidden, c.proj_dim, c.pred_hidden)
    init, step, backbone_of = all4one.make_all4one(config, model, info, c.num_steps)
    return init, step, backbone_of, model
  raise ValueError(f"unknown config.ssl.method {c.method!r}; use 'all4one' or 'simclr'")
