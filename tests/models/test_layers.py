"""Our BatchNorm (alone and with ReLU and pooling in one op), max-pooling and
wide-padding convolution equal Flax's (and PyTorch's) to float tolerance."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import torch_models
from vibe_jax.models.cnn import SmallCNN
from vibe_jax.models.layers import (BatchNorm, batch_norm_relu_pool_train, batch_norm_train,
                                    conv_wide_padding, max_pool2)


def _loss(module, variables, x, g, train):
  def f(params, x):
    y, updates = module.apply({**variables, "params": params}, x, mutable=["batch_stats"]) \
        if train else (module.apply({**variables, "params": params}, x), {})
    return jnp.sum(y * g), (y, updates)
  return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(variables["params"], x)


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (16, 7)])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_equals_flax(shape, train):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 3 + 2)
  g = jnp.asarray(rng.standard_normal(shape, np.float32))
  c = shape[-1]
  variables = {"params": {"scale": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
                          "bias": jnp.asarray(rng.standard_normal(c), jnp.float32)},
               "batch_stats": {"mean": jnp.asarray(rng.standard_normal(c), jnp.float32),
                               "var": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32)}}
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  ours = BatchNorm(**kw)
  theirs = nn.BatchNorm(**kw)
  # Same variables: checkpoints of either load in the other.
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) ==
          jax.tree.map(jnp.shape, theirs.init(jax.random.PRNGKey(0), x)))
  (_, (y1, u1)), (dp1, dx1) = _loss(ours, variables, x, g, train)
  (_, (y2, u2)), (dp2, dx2) = _loss(theirs, variables, x, g, train)
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-5)
  for k in ("scale", "bias"):
    np.testing.assert_allclose(dp1[k], dp2[k], rtol=1e-4, atol=1e-4)
  if train:
    for k in ("mean", "var"):
      np.testing.assert_allclose(u1["batch_stats"][k], u2["batch_stats"][k],
                                 rtol=1e-5, atol=1e-6)


def test_max_pool2_equals_max_pool_and_splits_only_exact_ties():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 8, 3), np.float32))
  pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(max_pool2(x), pool(x))
  g = jnp.asarray(rng.standard_normal((2, 3, 4, 3), np.float32))
  grad = lambda f, v: jax.grad(lambda v: jnp.sum(f(v) * g))(v)
  np.testing.assert_array_equal(grad(max_pool2, x), grad(pool, x))  # no ties: equal
  tied = jnp.zeros((1, 2, 2, 1))
  split = jax.grad(lambda v: 3.0 * jnp.sum(max_pool2(v)))(tied)
  np.testing.assert_allclose(split[0, :, :, 0], 0.75)  # a four-way tie shares it


def _three_ops(pool):
  def f(x, scale, bias):
    y, mean, var = batch_norm_train(x, scale, bias, 1e-5)
    return pool(jax.nn.relu(y)), mean, var
  return f


def _fused(x, scale, bias):
  return batch_norm_relu_pool_train(x, scale, bias, 1e-5)


def _value_and_grads(f, x, scale, bias, g):
  (pooled, mean, var), vjp = jax.vjp(f, x, scale, bias)
  zero = jnp.zeros_like(mean)
  return (pooled, mean, var), vjp((g, zero, zero))


@pytest.mark.parametrize("shape", [(6, 8, 10, 5), (3, 2, 4, 16)])
def test_batch_norm_relu_pool_equals_the_three_ops(shape):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 2 + 1)
  c = shape[-1]
  scale = jnp.asarray(rng.uniform(-1.5, 2, c), jnp.float32)  # negative scales too
  bias = jnp.asarray(rng.standard_normal(c) - 1.5, jnp.float32)
  g = jnp.asarray(rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, c), np.float32))
  ours, ours_grads = jax.jit(lambda *a: _value_and_grads(_fused, *a))(x, scale, bias, g)
  theirs, their_grads = _value_and_grads(_three_ops(max_pool2), x, scale, bias, g)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert float(jnp.mean(ours[0] == 0)) > 0.1  # the ReLU cut some windows entirely
  for a, b in zip(ours_grads, their_grads):  # no ties in random inputs
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batch_norm_relu_pool_gives_a_tie_to_the_first_maximum():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((4, 4, 6, 3), np.float32)
  x[:, 0, 1, :] = x[:, 0, 0, :] = np.abs(x[:, 0, 0, :]) + 3  # positive ties, first row
  x[:, 3, 5, :] = x[:, 2, 5, :] = np.abs(x[:, 2, 5, :]) + 3  # and second row
  x = jnp.asarray(x)
  scale, bias = jnp.ones(3), jnp.zeros(3)
  g = jnp.asarray(rng.standard_normal((4, 2, 3, 3), np.float32))
  nn_pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  _, (dx, dscale, dbias) = _value_and_grads(_fused, x, scale, bias, g)
  _, (dx2, dscale2, dbias2) = _value_and_grads(_three_ops(nn_pool), x, scale, bias, g)
  # As nn.max_pool (and PyTorch): the whole gradient to the first maximum.
  np.testing.assert_allclose(dx, dx2, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dscale, dscale2, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dbias, dbias2, rtol=1e-4, atol=1e-5)
  _, (dx3, _, _) = _value_and_grads(_three_ops(max_pool2), x, scale, bias, g)
  assert not np.allclose(dx, dx3, atol=1e-3)  # max_pool2 splits ties: a real difference


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_module_with_relu_pool(train):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((4, 6, 4, 3), np.float32))
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  fused, plain = BatchNorm(relu_pool=True, **kw), BatchNorm(**kw)
  variables = plain.init(jax.random.PRNGKey(0), x)
  variables = {"params": {"scale": jnp.asarray([0.5, 2.0, -1.0]), "bias": jnp.asarray([0.1, -0.2, 0.3])},
               "batch_stats": {"mean": jnp.asarray([0.2, 0.0, -0.1]), "var": jnp.asarray([1.5, 0.5, 1.0])}}
  assert (jax.tree.map(jnp.shape, fused.init(jax.random.PRNGKey(0), x)) ==
          jax.tree.map(jnp.shape, variables))  # same variables: checkpoints load
  run = lambda m: m.apply(variables, x, mutable=["batch_stats"]) if train else (
      m.apply(variables, x), {})
  (y1, u1), (y2, u2) = run(fused), run(plain)
  np.testing.assert_allclose(y1, max_pool2(jax.nn.relu(y2)), rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
  with pytest.raises(ValueError, match=r"H and W even; got shape \(4, 5, 4, 3\)"):
    fused.apply(variables, x[:, :5], mutable=["batch_stats"])


@pytest.mark.parametrize("kernel,strides,padding", [
    ((3, 3), (1, 1), 2),             # the CIFAR ResNet stem: padded by 1 first
    ((3, 3), (2, 2), ((3, 0), (1, 2))),  # uneven, one side beyond the half-width
    ((7, 7), (2, 2), 3),             # within the half-width: passed through
    ((3, 3), (1, 1), "SAME"),
])
def test_conv_wide_padding_equals_the_convolution(kernel, strides, padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 11, 12, 3), np.float32))
  ours = nn.Conv(4, kernel, strides, padding=padding, conv_general_dilated=conv_wide_padding)
  theirs = nn.Conv(4, kernel, strides, padding=padding)
  variables = theirs.init(jax.random.PRNGKey(0), x)
  y1, y2 = ours.apply(variables, x), theirs.apply(variables, x)
  assert y1.shape == y2.shape
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.standard_normal(y2.shape, np.float32))
  grads = [jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) * g), argnums=(0, 1))(variables, x)
           for m in (ours, theirs)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_small_cnn_matches_pytorch_forward_and_gradients():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((4, 16, 16, 3), np.float32)
  net = torch_models.SmallCNN().train()
  model = SmallCNN()
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x))
  convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
  params = jax.tree.map(lambda a: a, variables["params"])
  for i, conv in enumerate(convs):
    params[f"Conv_{i}"]["kernel"] = jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0))

  def loss(params, x):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2), out

  (_, out), (grads, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, jnp.asarray(x))
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_(True)
  out_t = net(xt)
  (out_t ** 2).sum().backward()
  np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-4)
  for i, conv in enumerate(convs):
    np.testing.assert_allclose(grads[f"Conv_{i}"]["kernel"],
                               conv.weight.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-3, atol=1e-4)
