"""Backbones: shapes, parameter counts against torchvision/DINOv2, BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax.models.backbones import BACKBONES, build_backbone, feature_dim
from vibe_jax.models.efficientnet import depthwise_conv
from vibe_jax.models.resnet import resnet18


def _count(tree):
  return sum(x.size for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name,size,params", [
    ("resnet18_cifar", 32, 11_168_832),  # torchvision resnet18 - fc, with the 3x3 stem
    ("resnet18", 64, 11_176_512),  # torchvision resnet18 - fc
    ("resnet50", 64, 23_508_032),  # torchvision resnet50 - fc
    ("small_cnn", 32, None),
    ("vit_s16", 32, 21_665_664),  # timm vit_small_patch16_224 - head
    ("dinov2_vits14", 28, 22_056_192),  # dinov2_vits14 - mask_token
    # efficientnet-lite0-57934424.pth less _fc and the BatchNorm running statistics
    ("efficientnet_lite0", 64, 3_371_008),
])
def test_backbone_shapes_and_sizes(name, size, params):
  model = build_backbone(name)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, size, size, 3))))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((3, size, size, 3))), variables)
  assert out.shape == (3, feature_dim(name))
  if params is not None:
    assert _count(variables["params"]) == params


def test_cifar_stem_keeps_34x34_maps():
  model = resnet18(cifar_stem=True)
  # Shapes only: tracing, nothing compiled.
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  kernel = variables["params"]["conv1"]["kernel"]
  assert kernel.shape == (3, 3, 3, 64)
  _, inter = jax.eval_shape(lambda v, x: model.apply(
      v, x, capture_intermediates=lambda mdl, _: mdl.name == "bn1"),
      variables, jnp.zeros((1, 32, 32, 3)))
  assert inter["intermediates"]["bn1"]["__call__"][0].shape == (1, 34, 34, 64)


def test_batchnorm_updates_only_in_training():
  model = build_backbone("resnet18_cifar")
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3)) * 3 + 1
  # Jitted: eagerly, every operation of ResNet-18 is compiled on its own.
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  out_eval = apply(variables, x)
  out_train, updates = apply(variables, x, train=True, mutable=("batch_stats",))
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                   variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))
  assert not np.allclose(out_eval, out_train)
  # Eval mode reads the running averages: the output does not depend on the batch.
  # (Other rows changed, same shape: the compiled program is reused.)
  others = apply(variables, x.at[1:].set(0.0))
  np.testing.assert_allclose(others[:1], out_eval[:1], rtol=1e-4, atol=1e-5)


def test_unknown_backbone_is_named():
  with pytest.raises(ValueError, match="unknown backbone 'resnet19'.*resnet18"):
    build_backbone("resnet19")
  assert set(BACKBONES) >= {"resnet18_cifar", "resnet50", "dinov2_vitg14", "vit_s16"}


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 1), (9, 3, 2), (10, 5, 2), (7, 5, 1)])
def test_depthwise_shift_and_add_is_the_grouped_convolution(size, kernel, stride):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, size, size, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
  shift = depthwise_conv(x, w, stride, "shift")
  conv = depthwise_conv(x, w, stride, "conv")
  assert shift.shape == (2, -(-size // stride), -(-size // stride), 6)
  np.testing.assert_allclose(shift, conv, atol=1e-5)
