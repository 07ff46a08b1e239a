"""Convolutions alone against PyTorch: each convolution of a backbone, forward and
both gradients, ours against PyTorch channels-last, and the step's total.

Where the training-step benchmark (`train_step.py`) says how far a whole step is
from PyTorch's, this says how much of it is the convolution kernels themselves.
Ours is the models' convolution, `vibe_jax.models.onednn_conv.conv`: oneDNN's
kernels (PyTorch's) for the forward, a stride-1 input gradient and the weight
gradient (`vibe_jax.models.onednn_lib`) where they apply, XLA's (Eigen's)
otherwise; VIBE_JAX_ONEDNN_CONV=0 times XLA's alone. Ours is timed as two
jitted programs (the forward, then the gradients of a linear loss, which need no
forward), PyTorch's as one forward and backward; the first convolution takes no
input gradient on either side (its input is the data). Both sides run under the
process settings `vibe_jax.main` uses (XLA flags, host allocator), 2 threads.

  pip install -e ".[bench]"
  python benchmarks/conv_layers.py --backbone=resnet18_cifar --batch_size=128
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

from train_step import seconds_per_step  # pylint: disable=wrong-import-position
from vibe_jax import provenance  # pylint: disable=wrong-import-position
from vibe_jax.models import onednn_conv  # pylint: disable=wrong-import-position


def layers(backbone: str) -> list[tuple[int, int, int, int, int, int, int, bool]]:
  """(input size, in channels, out channels, kernel, stride, padding, how many,
  input gradient) for each distinct convolution of `backbone` on 32x32 inputs."""
  if backbone == "small_cnn":
    return [(32, 3, 32, 3, 1, 1, 1, False), (16, 32, 64, 3, 1, 1, 1, True),
            (8, 64, 128, 3, 1, 1, 1, True)]
  if backbone != "resnet18_cifar":
    raise SystemExit(f"unknown backbone {backbone!r}: resnet18_cifar or small_cnn")
  # The stem runs on the input padded by 1 first (models/layers.conv_wide_padding).
  out = [(36, 3, 64, 3, 1, 1, 1, False), (34, 64, 64, 3, 1, 1, 4, True)]
  size = 34
  for cin, cout in ((64, 128), (128, 256), (256, 512)):
    half = (size - 1) // 2 + 1
    out += [(size, cin, cout, 3, 2, 1, 1, True), (size, cin, cout, 1, 2, 0, 1, True),
            (half, cout, cout, 3, 1, 1, 3, True)]
    size = half
  return out


def _median_ms(run, block, steps, rounds):
  block(run())  # compile
  return statistics.median(seconds_per_step(run, steps, block)[0] for _ in range(rounds)) * 1e3


def main():
  """Command line: see the module docstring."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbone", default="resnet18_cifar")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(2)
  b = args.batch_size
  total = {"ours": 0.0, "torch": 0.0}
  for size, cin, cout, k, stride, pad, count, input_grad in layers(args.backbone):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, size, size, cin)).astype(np.float32)
    w = (rng.standard_normal((k, k, cin, cout)) * 0.05).astype(np.float32)

    def conv(x, w, stride=stride, pad=pad):
      return onednn_conv.conv(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                              dimension_numbers=("NHWC", "HWIO", "NHWC"))

    g = rng.standard_normal(jax.eval_shape(conv, x, w).shape).astype(np.float32)
    forward = jax.jit(conv)
    grads = jax.jit(jax.grad(lambda w, x, g=g: jnp.sum(conv(x, w) * g),
                             argnums=(0, 1) if input_grad else 0))
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    ours = (_median_ms(lambda: forward(xj, wj), jax.block_until_ready, args.steps, args.rounds)
            + _median_ms(lambda: grads(wj, xj), jax.block_until_ready, args.steps,
                         args.rounds))
    layer = torch.nn.Conv2d(cin, cout, k, stride, pad, bias=False).to(
        memory_format=torch.channels_last)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).requires_grad_(input_grad)
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def torch_step(layer=layer, xt=xt, gt=gt):
      layer.weight.grad, xt.grad = None, None
      layer(xt).backward(gt)
      return layer.weight.grad

    theirs = _median_ms(torch_step, lambda out: out.sum().item(), args.steps, args.rounds)
    total["ours"] += ours * count
    total["torch"] += theirs * count
    print(f"{size}x{size}x{cin} -> {cout}, {k}x{k} stride {stride}, x{count}: ours "
          f"{ours:.1f} ms, PyTorch channels-last {theirs:.1f} ms, ratio {ours / theirs:.2f}",
          flush=True)
  prov = provenance.provenance()
  print(f"\nall convolutions of one {args.backbone} step at batch {b}: ours "
        f"{total['ours']:.0f} ms, PyTorch {total['torch']:.0f} ms, ratio "
        f"{total['ours'] / total['torch']:.2f}\n{prov['cpu']}, commit {prov['commit']}, "
        f"jax {jax.__version__}, torch {torch.__version__}, oneDNN convolutions: "
        f"{onednn_conv.available()}, oneDNN gradients: {onednn_conv.grads_available()}")


if __name__ == "__main__":
  main()
