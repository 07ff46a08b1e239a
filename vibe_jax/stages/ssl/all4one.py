"""All4One (solo-learn), the reference's self-supervised method (spec 8.2).

Per step, two augmented views; an online encoder (backbone + projector
Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN, 2048 hidden, 256 out) with two predictors
(Linear-BN-ReLU-Linear, 4096 hidden) and a 3-layer transformer encoder (d 256, 8
heads, feed-forward 512, dropout 0.1, post-norm, as torch's default); a momentum
copy of the encoder (tau from 0.99 to 1 on a cosine schedule); a FIFO queue of
normalised momentum projections whose top-5 dot-product neighbours of each online
projection are its "support set". The loss is
  0.5 * att_nnclr + 0.5 * nnclr + 0.5 * feature_loss, with
  nnclr     = [nnclr(nn1[:, 0], p2) + nnclr(nn2[:, 0], p1)] / 2, T = 0.2,
  att_nnclr = [nnclr(rich1, strange2) + nnclr(rich2, strange1)] / 2, T = 0.1,
  rich      = transformer(PE + the 5 neighbours)[:, 0],
  strange   = transformer(PE + [predictor2(z), neighbours 1-4])[:, 0],
  feature   = 10 * (0.5 sqrt(mean_diag (C - 1)^2) + 0.5 sqrt(mean_offdiag C^2)) of the
              batch-standardised cross-correlations C of online and momentum
              projections of the other view (both pairs averaged inside the roots),
  nnclr(a, b) = CE((a^ b^T) / T, identity).
The transformer group uses lr 0.1, the rest LARS at lr 1.0 x batch / 256 (spec 8.2).
The online linear classifier of solo-learn (it does not touch the backbone) is left
out.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vibe_jax.data.ssl_augment import two_views
from vibe_jax.models.layers import BatchNorm
from vibe_jax.models.vmf import l2_normalize
from vibe_jax.stages.ssl.base import SSLMethod, SSLParts, lars, register
from vibe_jax.train.state import TrainState

__all__ = ["All4One", "Encoder", "positional_encoding", "nnclr_loss", "feature_loss",
           "All4OneMethod"]


def _bn(train):
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class Encoder(nn.Module):
  """Backbone and projector; the momentum branch is a copy of this."""

  backbone: nn.Module
  hidden: int = 2048
  out: int = 256

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = self.backbone(x, train=train)
    z = nn.relu(_bn(train)(nn.Dense(self.hidden)(h)))
    z = nn.relu(_bn(train)(nn.Dense(self.hidden)(z)))
    return _bn(train)(nn.Dense(self.out)(z))

  def embed(self, x, train: bool = False):
    """Backbone features (what VIBE-SS fine-tunes and the kNN monitor reads)."""
    return self.backbone(x, train=train)


class _Predictor(nn.Module):
  hidden: int
  out: int

  @nn.compact
  def __call__(self, z, train: bool = False):
    return nn.Dense(self.out)(nn.relu(_bn(train)(nn.Dense(self.hidden)(z))))


class _TransformerLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer defaults: post-norm, ReLU, dropout 0.1."""

  dim: int
  heads: int
  ff: int
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool = False):
    attn = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout,
                                           deterministic=not train)(x, x)
    x = nn.LayerNorm(epsilon=1e-5)(x + nn.Dropout(self.dropout, deterministic=not train)(attn))
    y = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(self.ff)(x)))
    y = nn.Dropout(self.dropout, deterministic=not train)(nn.Dense(self.dim)(y))
    return nn.LayerNorm(epsilon=1e-5)(x + y)


def positional_encoding(tokens: int = 5, dim: int = 256) -> np.ndarray:
  """(tokens, dim): PositionalEncodingPermute1D(tokens) as spec 8.2 applies it, a
  sinusoid over the `dim` positions with `tokens` interleaved sin/cos channels."""
  channels = int(math.ceil(tokens / 2) * 2)
  inv_freq = 1.0 / (10000 ** (np.arange(0, channels, 2) / channels))
  angles = np.arange(dim)[:, None] * inv_freq[None, :]  # (dim, channels / 2)
  emb = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(dim, channels)
  return emb[:, :tokens].T.astype(np.float32)


class All4One(nn.Module):
  """The online network: encoder, two predictors and the transformer."""

  backbone: nn.Module
  proj_hidden: int = 2048
  proj_dim: int = 256
  pred_hidden: int = 4096
  layers: int = 3
  heads: int = 8
  ff: int = 512
  dropout: float = 0.1

  def setup(self):
    # A clone: the field itself would also bind at this level as "backbone".
    self.encoder = Encoder(self.backbone.clone(), self.proj_hidden, self.proj_dim)
    self.predictor = _Predictor(self.pred_hidden, self.proj_dim)
    self.predictor2 = _Predictor(self.pred_hidden, self.proj_dim)
    self.transformer = [_TransformerLayer(self.proj_dim, self.heads, self.ff, self.dropout)
                        for _ in range(self.layers)]

  def __call__(self, x, train: bool = False):
    z = self.encoder(x, train)
    return z, self.predictor(z, train), self.predictor2(z, train)

  def attend(self, tokens, train: bool = False):
    """transformer(PE + tokens)[:, 0] for (B, 5, proj_dim) tokens."""
    x = tokens + jnp.asarray(positional_encoding(tokens.shape[1], tokens.shape[2]))
    for layer in self.transformer:
      x = layer(x, train)
    return x[:, 0]

  def embed(self, x, train: bool = False):
    """Backbone features (what VIBE-SS fine-tunes and the kNN monitor reads)."""
    return self.encoder.embed(x, train)


def nnclr_loss(a: jax.Array, b: jax.Array, temperature: float) -> jax.Array:
  """CE((a^ b^T) / T, identity): each a_i must pick b_i."""
  logits = l2_normalize(a) @ l2_normalize(b).T / temperature
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.arange(a.shape[0])).mean()


def feature_loss(pairs) -> jax.Array:
  """The redundancy-reduction term over (online, momentum) pairs, see the module doc."""
  def corr(a, b):
    a = (a - a.mean(0)) / (a.std(0) + 1e-5)
    b = (b - b.mean(0)) / (b.std(0) + 1e-5)
    return a.T @ b / a.shape[0]

  on, off = [], []
  for a, b in pairs:
    c = corr(a, b)
    d = c.shape[0]
    eye = jnp.eye(d, dtype=bool)
    on.append(jnp.sum(jnp.where(eye, (c - 1) ** 2, 0)) / d)
    off.append(jnp.sum(jnp.where(eye, 0, c ** 2)) / (d * d - d))
  return 10.0 * (0.5 * jnp.sqrt(jnp.mean(jnp.stack(on))) +
                 0.5 * jnp.sqrt(jnp.mean(jnp.stack(off))))


@register("all4one")
@dataclasses.dataclass(frozen=True)
class All4OneMethod(SSLMethod):
  """All4One on `config.ssl` (proj_hidden, proj_dim, pred_hidden, queue_size,
  base_tau, lr; the transformer at lr 0.1)."""

  def build(self, c, backbone, info) -> SSLParts:
    batch = min(c.batch_size, c.queue_size)
    if c.queue_size % batch:
      raise ValueError(f"config.ssl.queue_size {c.queue_size} must be a multiple of the "
                       f"batch size {batch}")
    model = All4One(backbone, c.proj_hidden, c.proj_dim, c.pred_hidden)
    return _parts(c, model, info, c.num_steps)


def _parts(c, model: All4One, info, num_steps: int) -> SSLParts:
  """init, step and backbone variables of All4One `model` (see the module doc)."""
  queue_size, topk = c.queue_size, 5
  encoder = Encoder(model.backbone, model.proj_hidden, model.proj_dim)
  label = lambda params: {k: ("transformer" if k.startswith("transformer") else "rest")
                          for k in params}
  tx = optax.multi_transform({"rest": lars(c, c.lr * c.batch_size / 256),
                              "transformer": lars(c, 0.1)},
                             lambda params: {k: jax.tree_util.tree_map(lambda _: v, params[k])
                                             for k, v in label(params).items()})

  def init(rng, sample):
    variables = model.init({"params": rng, "dropout": rng}, sample)
    # attend() is not called by __call__: initialise the transformer through it.
    tokens = jnp.zeros((1, topk, model.proj_dim))
    t_vars = model.init({"params": rng, "dropout": rng}, tokens, method="attend")
    params = {**variables["params"], **{k: v for k, v in t_vars["params"].items()
                                        if k.startswith("transformer")}}
    queue = l2_normalize(jax.random.normal(jax.random.fold_in(rng, 7),
                                           (queue_size, model.proj_dim)))
    extra = {"momentum": jax.tree_util.tree_map(jnp.array, params["encoder"]),
             "momentum_stats": jax.tree_util.tree_map(jnp.array,
                                                      variables["batch_stats"]["encoder"]),
             "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)}
    return TrainState.create_for(params=params, tx=tx,
                                 batch_stats=variables["batch_stats"], extra=extra)

  def step(state, batch):
    images = batch["x"]
    k_views, k_drop = jax.random.split(batch["key"])
    x1, x2 = two_views(k_views, images, info)
    n = images.shape[0]
    x = jnp.concatenate([x1, x2])
    zm, mom_updates = encoder.apply({"params": state.extra["momentum"],
                                     "batch_stats": state.extra["momentum_stats"]},
                                    x, train=True, mutable=["batch_stats"])
    zm = jax.lax.stop_gradient(zm)
    zm1, zm2 = zm[:n], zm[n:]
    queue = state.extra["queue"]

    def neighbours(z):
      top = jax.lax.top_k(l2_normalize(z) @ queue.T, topk)[1]
      return jax.lax.stop_gradient(queue[top])  # (B, 5, D), nearest first

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      (z, p, p2), updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": k_drop})
      z1, z2, p1, p2_, q1, q2 = z[:n], z[n:], p[:n], p[n:], p2[:n], p2[n:]
      nn1, nn2 = neighbours(z1), neighbours(z2)
      nnclr = (nnclr_loss(nn1[:, 0], p2_, 0.2) + nnclr_loss(nn2[:, 0], p1, 0.2)) / 2
      # The four token sets through the transformer as one batch: it has no batch
      # statistics, so this is four separate calls (each its own dropout draws) in
      # one program, which XLA compiles once instead of four times.
      tokens = jnp.concatenate([
          nn1, nn2, jnp.concatenate([q1[:, None], nn1[:, :topk - 1]], axis=1),
          jnp.concatenate([q2[:, None], nn2[:, :topk - 1]], axis=1)])
      rich1, rich2, strange1, strange2 = jnp.split(model.apply(
          {"params": params}, tokens, train=True, method="attend",
          rngs={"dropout": jax.random.fold_in(k_drop, 1)}), 4)
      att = (nnclr_loss(rich1, strange2, 0.1) + nnclr_loss(rich2, strange1, 0.1)) / 2
      feat = feature_loss([(z1, zm2), (z2, zm1)])
      loss = 0.5 * att + 0.5 * nnclr + 0.5 * feat
      return loss, (updates["batch_stats"], {"loss": loss, "nnclr": nnclr, "att_nnclr": att,
                                             "feature_loss": feat})

    (_, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new = state.apply_gradients(grads=grads, batch_stats=stats)
    params = new.params
    tau = 1.0 - (1.0 - c.base_tau) * (jnp.cos(jnp.pi * state.step / num_steps) + 1) / 2
    momentum = jax.tree_util.tree_map(lambda m, o: tau * m + (1 - tau) * o,
                                      state.extra["momentum"], params["encoder"])
    ptr = state.extra["queue_ptr"]
    queue = jax.lax.dynamic_update_slice_in_dim(queue, l2_normalize(zm1), ptr, axis=0)
    extra = {"momentum": momentum, "momentum_stats": mom_updates["batch_stats"],
             "queue": queue, "queue_ptr": (ptr + n) % queue_size}
    return new.replace(extra=extra), metrics

  def backbone(state):
    return {"params": state.params["encoder"]["backbone"],
            "batch_stats": state.batch_stats["encoder"]["backbone"]}

  return SSLParts(model, init, step, backbone)
