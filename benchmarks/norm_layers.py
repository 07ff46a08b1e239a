"""BatchNorm, ReLU and 2x2 max-pooling against PyTorch: the small CNN's three blocks,
forward and backward, as one op and as three, against PyTorch channels-last.

Where the training-step benchmark (`train_step.py`) says how far a whole step is
from PyTorch's and `conv_layers.py` how much of it is the convolutions, this times
what sits between them in the small CNN. "one op" is what the model runs when
training, `vibe_jax.models.layers.batch_norm_relu_pool_train`; "three ops" is
`batch_norm_train`, `jax.nn.relu` and `max_pool2`, as the model ran them before.
Ours is timed as one jitted forward and backward (the gradient of a linear loss of
the pooled output), PyTorch's as `BatchNorm2d`, `relu` and `max_pool2d` forward and
backward; the contenders run interleaved, each figure the median of `--rounds`.
Both sides run under the process settings `vibe_jax.main` uses, 2 threads.

  pip install -e ".[bench]"
  python benchmarks/norm_layers.py --batch_size=512
"""

import argparse
import statistics

from vibe_jax import runtime

runtime.configure_xla_flags()  # as `python -m vibe_jax.main` does, before jax runs
runtime.configure_allocator()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from train_step import seconds_per_step, warm_up  # pylint: disable=wrong-import-position
from vibe_jax import provenance  # pylint: disable=wrong-import-position
from vibe_jax.models import layers  # pylint: disable=wrong-import-position

# (size, channels) at the input of each BatchNorm of the small CNN on 32x32 images.
SMALL_CNN_BLOCKS = [(32, 32), (16, 64), (8, 128)]


def ours(fused: bool):
  """Forward and backward of one block as a jitted (x, scale, bias, g) -> grads."""
  def block(x, scale, bias):
    if fused:
      return layers.batch_norm_relu_pool_train(x, scale, bias, 1e-5)[0]
    y = layers.batch_norm_train(x, scale, bias, 1e-5)[0]
    return layers.max_pool2(jax.nn.relu(y))

  return jax.jit(lambda x, scale, bias, g: jax.vjp(block, x, scale, bias)[1](g))


def theirs(x: np.ndarray, g: np.ndarray):
  """PyTorch's forward and backward of the same block, channels-last."""
  bn = torch.nn.BatchNorm2d(x.shape[-1]).to(memory_format=torch.channels_last)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last).requires_grad_(True)
  gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

  def run():
    xt.grad = None
    bn.zero_grad(set_to_none=True)
    torch.nn.functional.max_pool2d(torch.relu(bn(xt)), 2).backward(gt)
    return xt.grad

  return run


def main():
  """Command line: see the module docstring."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=512,
                      help="512: the SimCLR step's two views of 256")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(2)
  b = args.batch_size
  total = {"one op": 0.0, "three ops": 0.0, "PyTorch": 0.0}
  for size, c in SMALL_CNN_BLOCKS:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, size, size, c)).astype(np.float32)
    g = rng.standard_normal((b, size // 2, size // 2, c)).astype(np.float32)
    xj, gj, scale, bias = jnp.asarray(x), jnp.asarray(g), jnp.ones(c), jnp.zeros(c)
    one, three = ours(True), ours(False)
    jax_block, torch_block = jax.block_until_ready, lambda out: out.sum().item()
    contenders = {"one op": (lambda: one(xj, scale, bias, gj), jax_block),
                  "three ops": (lambda: three(xj, scale, bias, gj), jax_block),
                  "PyTorch": (theirs(x, g), torch_block)}
    for run, block in contenders.values():
      warm_up(run, block)
    times = {k: [] for k in contenders}
    for _ in range(args.rounds):
      for k, (run, block) in contenders.items():
        times[k].append(seconds_per_step(run, args.steps, block)[0] * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    for k, v in ms.items():
      total[k] += v
    print(f"{size}x{size}x{c}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()) +
          f"; one op / PyTorch {ms['one op'] / ms['PyTorch']:.2f}", flush=True)
  prov = provenance.provenance()
  print(f"\nall three blocks at batch {b}: " + ", ".join(f"{k} {v:.1f} ms"
                                                      for k, v in total.items()) +
        f"; one op / PyTorch {total['one op'] / total['PyTorch']:.2f}\n{prov['cpu']}, commit "
        f"{prov['commit']}, jax {jax.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
  main()
