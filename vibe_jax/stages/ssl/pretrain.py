"""The self-supervised pretraining stage: a backbone trained without labels on the
poisoned training images, for VIBE-SS to fine-tune.

Spec 8.2's two-view augmentations (`vibe_jax.data.ssl_augment`), the method named
by `config.ssl.method` (see `base.py`), the one training loop (`vibe_jax.train`):
checkpoints in `workdir/ssl/checkpoints`, resumed from there. A kNN monitor
(k = 20, cosine similarity, weights exp(sim / 0.07)) on the clean test set is
logged every `ssl.knn_every` steps. The backbone's variables go to
`workdir/ssl/backbone.msgpack`.
"""

import dataclasses
import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from vibe_jax import files, parallel
from vibe_jax.data import device
from vibe_jax.data.features import FeatureData
from vibe_jax.data.sources import DatasetInfo
from vibe_jax.errors import InputError
from vibe_jax.models.backbones import build_backbone
from vibe_jax.models.convert import save_variables
from vibe_jax.report import JsonLines
from vibe_jax.stages.ssl import base
from vibe_jax.train import (Hook, Inference, Inputs, LoopSettings, batch_source,
                            evaluators, fit, stage_seconds, variables)

__all__ = ["SSLResult", "pretrain"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SSLResult:
  """The pretrained backbone's variables file and how the stage went."""

  backbone_path: pathlib.Path
  steps: int
  seconds: float
  knn_acc: float | None

  def summary(self) -> dict:
    """What results.json records of this stage."""
    return {"backbone_path": str(self.backbone_path), "steps": self.steps,
            "seconds": round(self.seconds, 2), "knn_acc": self.knn_acc}


class KNNMonitor(Hook):
  """Adds the kNN accuracy of the backbone's features to every `every`-th log row."""

  def __init__(self, model, inputs: Inputs, data: FeatureData, every: int, last: int,
               batch_size: int = 256):
    self._inference = Inference(model, inputs, batch_size)  # compiled once for the stage
    self._data, self._every, self._last = data, every, last
    self.last_value = None

  def on_log(self, step, state, row):
    if not self._every or (step % self._every and step != self._last):
      return
    row.update(evaluators.build("knn")(self._inference, variables(state), self._data))
    self.last_value = row["knn_acc"]
    _log.info("[ssl] step %d: loss %.4f, kNN accuracy on the clean test set %.1f%%",
              step, row["loss"], 100 * row["knn_acc"])


def pretrain(config: ml_collections.ConfigDict, data: FeatureData, info: DatasetInfo,
             workdir: pathlib.Path, log: JsonLines) -> SSLResult:
  """Runs (or resumes) `config.ssl` pretraining of `config.model.backbone` on the
  poisoned training images of `data`."""
  if info is None or not data.is_images:
    raise InputError("config.ssl needs image data (config.data.source='images')")
  c = config.ssl
  try:
    parts = base.build(c.method).build(c, build_backbone(config.model.backbone), info)
  except ValueError as error:
    raise InputError(f"config.ssl: {error}") from error
  # One compiled program, not each initialiser operation compiled on its own (the
  # eager All4One initialisation took 16.7 s on a 2-core CPU); values equal to float
  # rounding (3e-8).
  sample = device.normalize(jnp.asarray(data.train_features[:2]), info)
  state = jax.jit(parts.init)(jax.random.PRNGKey(config.seed + 1), sample)
  settings = LoopSettings.from_config(config, num_steps=c.num_steps, backbone=True)
  monitor = KNNMonitor(parts.model, Inputs(info), data, c.knn_every, c.num_steps,
                       config.eval_batch_size)
  source = batch_source({"x": data.train_features}, c.batch_size, (config.seed, 0x551),
                        config.data.prefetch)
  state = fit(name="ssl", state=state, step_fn=parts.step, source=source,
              settings=settings, workdir=workdir, log=log,
              key=jax.random.PRNGKey(config.seed + 2), hooks=[monitor])
  path = workdir / "ssl" / "backbone.msgpack"
  files.save_with(path, lambda tmp: save_variables(
      parallel.to_host(parts.backbone_variables(state)), tmp))
  parallel.sync("ssl backbone saved")  # every process loads what process 0 wrote
  return SSLResult(path, c.num_steps, stage_seconds(workdir, "ssl"), monitor.last_value)
