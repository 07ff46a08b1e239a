"""Training-step throughput: the VIBE-SS M-step and the SimCLR step, images/s.

Each step is the real jitted step (augmentation inside jit, as training runs it)
on a random uint8 CIFAR-sized batch, timed after compilation.

  python benchmarks/train_step.py --backbones=resnet18_cifar,small_cnn --batch_size=256
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from vibe_jax import mstep
from vibe_jax.config import base_config
from vibe_jax.data import sources
from vibe_jax.data.device import augment
from vibe_jax.models import VIBEHead, VIBEModel
from vibe_jax.models.backbones import build_backbone, feature_dim
from vibe_jax.stages import ssl
from vibe_jax.train import TrainState


def timed(fn, state, steps):
  state, out = fn(state)  # compile
  jax.block_until_ready(out)
  began = time.perf_counter()
  for _ in range(steps):
    state, out = fn(state)
  jax.block_until_ready(out)
  return (time.perf_counter() - began) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbones", default="resnet18_cifar,small_cnn")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  info = sources.DATASETS["cifar10"]
  b = args.batch_size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, b), jnp.int32)
  device = jax.devices()[0].device_kind
  rows = []
  for name in args.backbones.split(","):
    model = VIBEModel(VIBEHead(10, feature_dim(name), conditioned=True), build_backbone(name))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    tx = mstep.make_optimizer({g: 1e-3 for g in mstep.GROUPS})
    state = TrainState.create_for(params=variables["params"], tx=tx,
                                  batch_stats=variables["batch_stats"],
                                  extra={"pseudo_labels": labels})
    vibe = mstep.make_vibe_step(model)

    @jax.jit
    def vibe_step(state):
      x = augment(jax.random.fold_in(jax.random.PRNGKey(1), state.step), images, info)
      return vibe(state, {"x": x, "y": labels, "index": jnp.arange(b)})

    vibe_s = timed(vibe_step, state, args.steps)

    config = base_config().ssl
    config.batch_size = b
    parts = ssl.build("simclr").build(config, build_backbone(name), info)
    sstate = parts.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    ssl_step = jax.jit(lambda s: parts.step(
        s, {"key": jax.random.fold_in(jax.random.PRNGKey(2), s.step), "x": images}))
    ssl_s = timed(ssl_step, sstate, args.steps)
    rows.append((name, b / vibe_s, b / ssl_s))
    print(f"{name}: VIBE-SS M-step {b / vibe_s:,.0f} img/s, SimCLR step {b / ssl_s:,.0f} "
          f"img/s (two views each)", flush=True)
  print(f"\ndevice: {jax.device_count()} x {device}, batch {b}\n")
  print("| backbone | VIBE-SS M-step img/s | SimCLR step img/s |")
  print("|---|---:|---:|")
  for name, a, s in rows:
    print(f"| {name} | {a:,.0f} | {s:,.0f} |")


if __name__ == "__main__":
  main()
