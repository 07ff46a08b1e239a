"""PyTorch -> Flax weight conversion: outputs agree numerically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests import torch_models
from vibe_jax.models import convert
from vibe_jax.models.efficientnet import efficientnet_lite
from vibe_jax.models.resnet import resnet18, resnet50
from vibe_jax.models.vit import ViT, ViTConfig
from vibe_jax.resize import bicubic_matrix


def _convert(torch_model, flax_model, size, path, prefix=""):
  state = {prefix + k: v.contiguous() for k, v in torch_model.state_dict().items()}
  save_file(state, str(path))
  template = jax.eval_shape(lambda: flax_model.init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, size, size, 3))))
  return convert.torch_to_flax(convert.load_safetensors(str(path)), template)


def _compare(torch_model, flax_model, variables, size, atol):
  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = torch_model.eval()(torch.from_numpy(x)).numpy()
  # Jitted: eagerly, every operation of the forward is compiled on its own.
  got = jax.jit(flax_model.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(got, want, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("layers,block,cifar,size", [
    ((2, 2, 2, 2), torch_models.BasicBlock, True, 32),
    ((3, 4, 6, 3), torch_models.Bottleneck, False, 64),
])
def test_resnet_conversion_matches_torch(tmp_path, layers, block, cifar, size):
  torch.manual_seed(0)
  reference = torch_models.ResNet(block, layers, cifar_stem=cifar)
  torch_models.randomise_batchnorm(reference)
  ours = resnet18(cifar_stem=True) if cifar else resnet50()
  # A solo-learn style checkpoint: every key under "backbone.".
  variables = _convert(reference, ours, size, tmp_path / "w.safetensors",
                       prefix="backbone." if cifar else "")
  _compare(reference, ours, variables, size, atol=2e-4)


@pytest.mark.parametrize("swiglu,size", [(False, 84), (True, 84), (False, 56)])
def test_dinov2_vit_conversion_matches_torch(tmp_path, swiglu, size):
  torch.manual_seed(1)
  config = ViTConfig(patch=14, dim=32, depth=2, heads=2, pos_grid=6, mlp_hidden=48,
                     layer_scale=True, swiglu=swiglu, interpolate_offset=0.1)
  reference = torch_models.DinoViT(14, 32, 2, 2, 48, grid=6, swiglu=swiglu)
  ours = ViT(config)
  variables = _convert(reference, ours, size, tmp_path / "w.safetensors")
  _compare(reference, ours, variables, size, atol=2e-4)  # 84 px: stored grid; 56: resized


def test_missing_and_misshaped_weights_are_named(tmp_path):
  reference = torch_models.ResNet(torch_models.BasicBlock, (2, 2, 2, 2), cifar_stem=True)
  state = {k: v for k, v in reference.state_dict().items() if not k.startswith("layer4")}
  save_file(state, str(tmp_path / "partial.safetensors"))
  template = jax.eval_shape(lambda: resnet18(cifar_stem=True).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  with pytest.raises(ValueError, match="lack 25 .*layer4_0"):
    convert.torch_to_flax(convert.load_safetensors(str(tmp_path / "partial.safetensors")),
                          template)
  wrong = dict(reference.state_dict())
  wrong["conv1.weight"] = torch.zeros(64, 3, 7, 7)
  save_file(wrong, str(tmp_path / "wrong.safetensors"))
  with pytest.raises(ValueError, match="conv1.weight"):
    convert.torch_to_flax(convert.load_safetensors(str(tmp_path / "wrong.safetensors")),
                          template)


@pytest.mark.parametrize("size_in,size_out,align,scale", [
    (4, 32, True, None), (37, 16, False, 16.1 / 37), (37, 16, False, None), (5, 9, False, None)])
def test_bicubic_matrix_is_torch_interpolate(size_in, size_out, align, scale):
  x = torch.randn(1, 2, size_in, size_in)
  if scale:
    want = torch.nn.functional.interpolate(x, scale_factor=(scale, scale), mode="bicubic",
                                           align_corners=align)
  else:
    want = torch.nn.functional.interpolate(x, size=size_out, mode="bicubic",
                                           align_corners=align)
  m = bicubic_matrix(size_in, size_out, align_corners=align, scale=scale)
  got = np.einsum("hk,bckl,wl->bchw", m, x.numpy(), m)
  np.testing.assert_allclose(got, want.numpy(), atol=2e-5)


@pytest.mark.parametrize("size", [64, 45])  # even and odd sides: TensorFlow "SAME" padding
def test_efficientnet_lite_conversion_matches_torch(tmp_path, size):
  torch.manual_seed(2)
  reference = torch_models.EfficientNetLite(num_classes=7, features=False)
  torch_models.randomise_batchnorm(reference)
  ours = efficientnet_lite("efficientnet_lite0", num_classes=7)
  # A .pth state dict, read with weights_only=True, classifier included.
  torch.save(reference.state_dict(), tmp_path / "w.pth")
  template = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, size, size, 3))))
  variables = convert.torch_to_flax(convert.load_state_dict(tmp_path / "w.pth"), template)
  _compare(reference, ours, variables, size, atol=1e-4)
  # As a backbone (no classifier) the same file gives the pooled features.
  reference.features = True
  backbone = efficientnet_lite("efficientnet_lite0")
  template = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, size, size, 3))))
  variables = convert.torch_to_flax(convert.load_state_dict(tmp_path / "w.pth"), template)
  _compare(reference, backbone, variables, size, atol=1e-4)


def test_pth_files_are_read_without_unpickling_objects(tmp_path):
  torch.save({"w": torch.zeros(2), "hook": _Unsafe()}, tmp_path / "evil.pth")
  with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
    convert.load_state_dict(tmp_path / "evil.pth")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.load_state_dict(tmp_path / "absent.pth")
  (tmp_path / "w.npy").write_bytes(b"")
  with pytest.raises(ValueError, match="expected .safetensors or .pth"):
    convert.load_state_dict(tmp_path / "w.npy")


class _Unsafe:
  """An object a full unpickler would construct (and a malicious one would run)."""
