"""Training-step speed against PyTorch: the VIBE M-step and the SimCLR step, images/s.

Our side is the library's real jitted step (`mstep.make_vibe_step`, the SimCLR
update `simclr.make_views_step`) with donated state, run under the XLA flags
`vibe_jax.runtime` chooses for this platform. PyTorch's side is the same backbone
(`tests/torch_models.py`, the parity tests' replicas) in NCHW and in channels-last,
with a linear classifier and cross-entropy for the M-step (the VIBE head is under 1%
of the step's work) and the same projector and NT-Xent loss for SimCLR, SGD with
momentum (LARS adds one norm per layer). Both sides get the same normalised float32
batch and no augmentation, so the figures compare model compute. PyTorch runs in a
process of its own, as a user's PyTorch run would (sharing one process, each
framework's freed buffers fragmented the other's heap, and a step that no longer fit
touched gigabytes of fresh memory), with the same host-allocator settings as ours.
Each contender is warmed up until a step touches (almost) no fresh memory; then the
contenders run interleaved, one at a time, at least `--steps` steps and
`--min_seconds` each per round, and each figure is the median over `--rounds`
rounds; the last column is our time over the best PyTorch layout's.

  pip install -e ".[bench]"
  python benchmarks/train_step.py --backbones=resnet18_cifar,small_cnn --batch_size=256
"""

import argparse
import math
import multiprocessing
import os
import pathlib
import resource
import statistics
import sys
import time
import traceback

from vibe_jax import runtime

runtime.configure_xla_flags()  # before jax is imported, as `python -m vibe_jax.main` does
MALLOC = runtime.configure_allocator()  # as main does; PyTorch's process does the same

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch import nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,wrong-import-position

from vibe_jax import mstep, provenance  # pylint: disable=wrong-import-position
from vibe_jax.config import base_config  # pylint: disable=wrong-import-position
from vibe_jax.models import VIBEHead, VIBEModel  # pylint: disable=wrong-import-position
from vibe_jax.models import onednn_conv  # pylint: disable=wrong-import-position
from vibe_jax.models.backbones import build_backbone, feature_dim  # pylint: disable=wrong-import-position
from vibe_jax.stages.ssl import base as ssl_base  # pylint: disable=wrong-import-position
from vibe_jax.stages.ssl import simclr  # pylint: disable=wrong-import-position
from vibe_jax.train import TrainState  # pylint: disable=wrong-import-position

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests import torch_models  # pylint: disable=g-import-not-at-top,wrong-import-position

TORCH_BACKBONES = {
    "resnet18_cifar": lambda: torch_models.ResNet(torch_models.BasicBlock, [2, 2, 2, 2],
                                                  cifar_stem=True),
    "small_cnn": torch_models.SmallCNN,
}


def jax_mstep(name, x, y):
  """Our M-step on batch (x, y), as a no-argument callable advancing its own state."""
  model = VIBEModel(VIBEHead(10, feature_dim(name), conditioned=True), build_backbone(name))
  variables = model.init(jax.random.PRNGKey(0), x[:1])
  tx = mstep.make_optimizer({g: 1e-3 for g in mstep.GROUPS})
  state = TrainState.create_for(params=variables["params"], tx=tx,
                                batch_stats=variables["batch_stats"],
                                extra={"pseudo_labels": jnp.array(y, copy=True)})
  step = jax.jit(mstep.make_vibe_step(model), donate_argnums=0)
  batch = {"x": x, "y": y, "index": jnp.arange(x.shape[0])}
  return _advancing(step, state, batch)


def jax_simclr(name, x1, x2):
  """Our SimCLR update on the views (x1, x2)."""
  c = base_config().ssl
  c.batch_size = x1.shape[0]
  model = simclr.SimCLR(build_backbone(name), c.proj_hidden, c.proj_dim)
  variables = model.init(jax.random.PRNGKey(0), x1[:1])
  state = TrainState.create_for(params=variables["params"],
                                tx=ssl_base.lars(c, c.lr * c.batch_size / 256),
                                batch_stats=variables["batch_stats"])
  step = jax.jit(simclr.make_views_step(model, c.temperature), donate_argnums=0)
  return _advancing(step, state, (x1, x2))


def _advancing(step, state, batch):
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], batch)
    return metrics

  return run


def torch_step(name, kind, inputs, y, channels_last):
  """The PyTorch twin of our `kind` step ("mstep" or "simclr") on the same inputs."""
  backbone = TORCH_BACKBONES[name]()
  dim = feature_dim(name)
  if kind == "mstep":
    head = nn.Linear(dim, 10)
  else:
    c = base_config().ssl
    head = nn.Sequential(nn.Linear(dim, c.proj_hidden), nn.BatchNorm1d(c.proj_hidden),
                         nn.ReLU(), nn.Linear(c.proj_hidden, c.proj_dim))
  model = nn.Sequential(backbone, head).train()
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(memory_format=fmt)
  x = torch.from_numpy(np.concatenate(inputs)).permute(0, 3, 1, 2).contiguous(
      memory_format=fmt)
  labels = torch.from_numpy(np.asarray(y)).long()
  opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
  temperature = base_config().ssl.temperature

  def run():
    opt.zero_grad(set_to_none=True)
    out = model(x)
    if kind == "mstep":
      loss = F.cross_entropy(out, labels)
    else:  # NT-Xent, as `simclr.nt_xent`
      z = F.normalize(out, dim=1)
      n = z.shape[0] // 2
      sim = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
      partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
      loss = F.cross_entropy(sim, partner)
    loss.backward()
    opt.step()
    return loss

  return run


def fresh_pages():
  """Pages this process has touched for the first time so far (minor page faults)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def seconds_per_step(run, steps, block):
  """Mean wall seconds and fresh pages of `steps` calls of `run`, `block` waiting for
  the last result."""
  pages = fresh_pages()
  began = time.perf_counter()
  for _ in range(steps):
    out = run()
  block(out)
  return (time.perf_counter() - began) / steps, (fresh_pages() - pages) / steps


def warm_up(run, block, limit=6, pages=2048):
  """Runs `run` until a step after the first touches fewer than `pages` fresh pages
  (8 MiB) or `limit` steps have run; returns the number of steps. The first compiles;
  the next can still grow the heap by the size of the step's largest buffer, when
  that no longer fits the hole the previous step left (ResNet-18's SimCLR step: 1.07
  million page faults, 6 s on top of 10), and such a step is not the steady state."""
  block(run())  # compiles: its fresh pages say nothing of the steps after it
  for n in range(2, limit + 1):
    _, fresh = seconds_per_step(run, 1, block)
    if fresh < pages:
      return n
  return limit


class Local:
  """A contender in this process: our jitted step."""

  def __init__(self, run, block):
    self.run, self.block = run, block

  def warm_up(self):
    return warm_up(self.run, self.block)

  def time(self, steps):
    return seconds_per_step(self.run, steps, self.block)

  def close(self):
    pass


def _torch_worker(conn):
  """PyTorch's process: builds `torch_step`s and times them as told over `conn`."""
  torch.set_num_threads(os.cpu_count())
  runs, block = {}, lambda out: out.item()
  while True:
    op, key, args = conn.recv()
    try:
      if op == "stop":
        return
      if op == "build":
        runs[key] = torch_step(*args)
        reply = None
      elif op == "warm_up":
        reply = warm_up(runs[key], block)
      elif op == "time":
        reply = seconds_per_step(runs[key], args, block)
      elif op == "drop":
        runs.pop(key, None)
        reply = None
      else:  # "info"
        reply = (torch.__version__, torch.get_num_threads())
      conn.send(("ok", reply))
    except Exception:  # pylint: disable=broad-except  # reported in the parent
      conn.send(("error", traceback.format_exc()))


class TorchProcess:
  """PyTorch's process (spawned: no state of ours is inherited)."""

  def __init__(self):
    spawn = multiprocessing.get_context("spawn")
    self.conn, child = spawn.Pipe()
    self.process = spawn.Process(target=_torch_worker, args=(child,), daemon=True)
    self.process.start()

  def ask(self, op, key=None, args=None):
    self.conn.send((op, key, args))
    status, reply = self.conn.recv()
    if status == "error":
      raise RuntimeError(f"PyTorch's process failed:\n{reply}")
    return reply

  def contender(self, key, *args):
    """A contender running `torch_step(*args)` in this process."""
    self.ask("build", key, args)
    return Remote(self, key)

  def stop(self):
    self.conn.send(("stop", None, None))
    self.process.join(timeout=30)


class Remote:
  """A contender in PyTorch's process."""

  def __init__(self, worker, key):
    self.worker, self.key = worker, key

  def warm_up(self):
    return self.worker.ask("warm_up", self.key)

  def time(self, steps):
    return self.worker.ask("time", self.key, steps)

  def close(self):
    self.worker.ask("drop", self.key)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbones", default="resnet18_cifar,small_cnn")
  parser.add_argument("--steps_kinds", default="mstep,simclr",
                      help="which steps to time: mstep, simclr or both")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=3, help="steps per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--min_seconds", type=float, default=2.0,
                      help="each contender runs at least this long per round (more "
                           "steps than --steps for fast models: 2 steps of the small "
                           "CNN, 0.2 s each, gave ratios 20%% apart between two runs)")
  args = parser.parse_args()
  b = args.batch_size
  rng = np.random.default_rng(0)
  x = rng.standard_normal((b, 32, 32, 3), dtype=np.float32)
  x2 = rng.standard_normal((b, 32, 32, 3), dtype=np.float32)
  y = rng.integers(0, 10, b).astype(np.int32)
  worker = TorchProcess()
  rows = []
  try:
    torch_version, torch_threads = worker.ask("info")
    for name in args.backbones.split(","):
      for kind in args.steps_kinds.split(","):
        if kind == "mstep":
          ours = jax_mstep(name, jnp.asarray(x), jnp.asarray(y))
          inputs, images = (x,), b
        else:
          ours = jax_simclr(name, jnp.asarray(x), jnp.asarray(x2))
          inputs, images = (x, x2), 2 * b
        contenders = {
            "vibe_jax": Local(ours, jax.block_until_ready),
            "torch NCHW": worker.contender("nchw", name, kind, inputs, y, False),
            "torch channels-last": worker.contender("cl", name, kind, inputs, y, True),
        }
        steps, warm = {}, {}
        for k, contender in contenders.items():  # compile / warm up, size the rounds
          warm[k] = contender.warm_up()
          once, _ = contender.time(1)
          steps[k] = max(args.steps, math.ceil(args.min_seconds / once))
        times = {k: [] for k in contenders}
        pages = {k: [] for k in contenders}
        for _ in range(args.rounds):
          for k, contender in contenders.items():
            seconds, fresh = contender.time(steps[k])
            times[k].append(seconds)
            pages[k].append(fresh)
        for contender in contenders.values():
          contender.close()
        median = {k: statistics.median(v) for k, v in times.items()}
        best = min(median["torch NCHW"], median["torch channels-last"])
        rows.append((name, kind, {k: images / v for k, v in median.items()},
                     median["vibe_jax"] / best))
        print(f"{name} {kind}: " + ", ".join(f"{k} {images / v:,.1f} img/s"
                                              for k, v in median.items()) +
              f"; vibe_jax time / best PyTorch {median['vibe_jax'] / best:.2f}x", flush=True)
        print("  seconds a step by round: " + "; ".join(
            f"{k} " + ", ".join(f"{t:.3f}" for t in v) for k, v in times.items()))
        print("  warm-up steps: " + ", ".join(f"{k} {v}" for k, v in warm.items()) +
              "; most fresh pages a timed step: " +
              ", ".join(f"{k} {max(v):,.0f}" for k, v in pages.items()), flush=True)
  finally:
    worker.stop()
  prov = provenance.provenance()
  print(f"\n{prov['cpu']}, {prov['device']}, batch {b} (SimCLR: {b} x 2 views), commit "
        f"{prov['commit']}, jax {jax.__version__}, torch {torch_version} "
        f"({torch_threads} threads, own process), "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"host allocator reuse (runtime.configure_allocator): {MALLOC}, oneDNN "
        f"convolutions (models.onednn_conv): {onednn_conv.available()}, oneDNN "
        f"gradients (models.onednn_conv.grads_available): {onednn_conv.grads_available()}\n")
  print("| backbone | step | vibe_jax img/s | PyTorch NCHW | PyTorch channels-last | "
        "vibe_jax time / best PyTorch |")
  print("|---|---|---:|---:|---:|---:|")
  for name, kind, ips, ratio in rows:
    print(f"| {name} | {kind} | {ips['vibe_jax']:,.1f} | {ips['torch NCHW']:,.1f} | "
          f"{ips['torch channels-last']:,.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
  main()
