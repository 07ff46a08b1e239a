"""`onednn_conv.conv` equals `lax.conv_general_dilated` (forward, both gradients,
vmap), runs on oneDNN where it says it does, and falls back where it must."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax.models import onednn_conv, onednn_lib

NHWC = ("NHWC", "HWIO", "NHWC")
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                         reason="oneDNN convolutions are used on x86-64 only")


def _loss(conv, strides, padding, **kwargs):
  def f(x, w):
    return jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=NHWC, **kwargs)))
  return f


def _custom_calls(f, *args) -> int:
  return jax.jit(f).lower(*args).as_text().count("__onednn$convolution")


def _host_callbacks(f, *args) -> int:
  # onednn_lib's gradients, one FFI call each (onednn_ffi).
  return jax.jit(f).lower(*args).as_text().count("custom_call @vibe_jax_onednn_")


@x86
def test_available_on_this_cpu():
  # CI and development machines are single-device x86-64 CPUs whose jaxlib has
  # oneDNN: the self-check must pass there, or the speed-up silently disappears.
  assert onednn_conv.available()


@x86
def test_available_when_first_asked_while_a_model_is_traced(recwarn):
  # The usual first call comes from a convolution inside jit (a model's init or
  # step): the self-check must still run on concrete values, and the persistent
  # cache's "cannot serialise" warning must not reach the user.
  onednn_conv.available.cache_clear()
  x, w = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
  f = jax.jit(lambda x, w: onednn_conv.conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC))
  assert "__onednn$convolution" in f.lower(x, w).as_text()
  assert onednn_conv.available()
  np.testing.assert_allclose(f(x, w), jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC), rtol=1e-6)
  assert not [w for w in recwarn if "persistent compilation cache" in str(w.message)]


@x86
@pytest.mark.parametrize("kernel,strides,padding,calls,host_calls", [
    # Forward and input gradient in XLA's oneDNN thunk, weight gradient on the host.
    (3, (1, 1), ((1, 1), (1, 1)), 2, 1),
    (3, (2, 2), ((1, 1), (1, 1)), 1, 2),   # strided: the input gradient on the host
    (1, (2, 2), ((0, 0), (0, 0)), 1, 2),   # ResNet's 1x1 shortcut
    (3, (1, 1), "SAME", 2, 1),
    (3, (1, 2), ((2, 0), (1, 2)), 1, 2),   # asymmetric; stride 2 on one axis
    (3, (1, 1), ((3, 1), (0, 1)), 1, 2),   # padding beyond k - 1 on one side
])
def test_forward_and_gradients_equal_lax(kernel, strides, padding, calls, host_calls):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 10, 9, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 5, 7)), jnp.float32)
  ours = _loss(onednn_conv.conv, strides, padding)
  theirs = _loss(jax.lax.conv_general_dilated, strides, padding)
  value, grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, w)
  want_value, want_grads = jax.jit(jax.value_and_grad(theirs, argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert _custom_calls(jax.grad(ours, argnums=(0, 1)), x, w) == calls
  assert _host_callbacks(jax.grad(ours, argnums=(0, 1)), x, w) == host_calls


@x86
def test_gradients_are_xlas_without_onednn_lib(monkeypatch):
  monkeypatch.setattr(onednn_lib, "available", lambda: False)
  onednn_conv.grads_available.cache_clear()
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  ours = _loss(onednn_conv.conv, (2, 2), "SAME")
  grad = jax.grad(ours, argnums=(0, 1))
  assert _host_callbacks(grad, x, w) == 0
  want = jax.grad(_loss(jax.lax.conv_general_dilated, (2, 2), "SAME"), argnums=(0, 1))(x, w)
  for got, expected in zip(jax.jit(grad)(x, w), want):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  monkeypatch.undo()
  onednn_conv.grads_available.cache_clear()
  assert onednn_conv.grads_available()


@x86
def test_gradients_on_onednn_where_they_can():
  # Linux x86-64 installs onednn-cpu-gomp: the FFI gradients must run there.
  assert onednn_conv.grads_available() == onednn_lib.available()


@x86
def test_vmap_of_the_gradients_equals_lax():
  # Per-example gradients: one FFI call per example.
  rng = np.random.default_rng(4)
  xs = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  per_example = lambda conv: jax.jit(jax.vmap(
      jax.grad(_loss(conv, (2, 2), "SAME"), argnums=(0, 1)), in_axes=(0, None)))
  for got, want in zip(per_example(onednn_conv.conv)(xs, w),
                       per_example(jax.lax.conv_general_dilated)(xs, w)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@x86
def test_eager_and_vmap_equal_lax():
  rng = np.random.default_rng(1)
  xs = jnp.asarray(rng.standard_normal((2, 3, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)
  want = jax.vmap(lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                         dimension_numbers=NHWC))(xs)
  got = jax.vmap(lambda x: onednn_conv.conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC))(xs)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  eager = onednn_conv.conv(xs[0], w, (1, 1), "SAME", dimension_numbers=NHWC)
  np.testing.assert_allclose(eager, want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["bfloat16", "groups", "dilation", "nchw"])
def test_what_onednn_does_not_take_goes_to_lax(case):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32)
  kwargs, dn = {"dimension_numbers": NHWC}, NHWC
  if case == "bfloat16":
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  elif case == "groups":
    w = w[:, :, :2]
    kwargs["feature_group_count"] = 2
  elif case == "dilation":
    kwargs["rhs_dilation"] = (2, 2)
  else:
    x, dn = jnp.transpose(x, (0, 3, 1, 2)), ("NCHW", "HWIO", "NCHW")
    kwargs["dimension_numbers"] = dn
  f = lambda x, w: onednn_conv.conv(x, w, (1, 1), "SAME", **kwargs)
  assert _custom_calls(f, x, w) == 0
  want = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
  np.testing.assert_allclose(np.asarray(f(x, w), np.float32), np.asarray(want, np.float32),
                             rtol=1e-5, atol=1e-5)


def test_the_environment_switch_turns_it_off(monkeypatch):
  monkeypatch.setenv(onednn_conv.ENV_SWITCH, "0")
  onednn_conv.available.cache_clear()
  try:
    assert not onednn_conv.available()
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    f = lambda x, w: onednn_conv.conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    assert _custom_calls(f, x, w) == 0
  finally:
    onednn_conv.available.cache_clear()
