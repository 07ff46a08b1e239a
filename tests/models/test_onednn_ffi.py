"""`onednn_ffi.grad`: oneDNN's convolution gradients as XLA FFI calls with a ctypes
handler, inside and outside jit, under vmap, and failing loudly."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax.models import onednn_ffi, onednn_lib

NHWC = ("NHWC", "HWIO", "NHWC")
pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the onednn-cpu-gomp wheel exists for Linux x86-64 only")


def _grads(x, w, dy, strides, padding):
  _, vjp = jax.vjp(lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=NHWC), x, w)
  return vjp(dy)


def _case(seed, strides=(2, 2), padding=((1, 1), (1, 1))):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)), jnp.float32)
  out = jax.eval_shape(lambda: jax.lax.conv_general_dilated(x, w, strides, padding,
                                                            dimension_numbers=NHWC))
  dy = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  return x, w, dy


def test_both_gradients_in_and_out_of_jit_equal_xla():
  assert onednn_lib.available()
  params = dict(strides=(2, 2), padding=((1, 1), (1, 1)))
  x, w, dy = _case(0)
  want_dx, want_dw = _grads(x, w, dy, **params)

  def both(x, w, dy):
    return (onednn_ffi.grad("data", dy, w, x.shape, **params),
            onednn_ffi.grad("weights", x, dy, w.shape, **params))

  for got_dx, got_dw in (both(x, w, dy), jax.jit(both)(x, w, dy)):
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_dw, want_dw, rtol=1e-4, atol=1e-5)


def test_vmap_calls_once_per_example():
  params = dict(strides=(1, 1), padding=((1, 1), (1, 1)))
  cases = [_case(seed, **params) for seed in (1, 2, 3)]
  xs, dys = jnp.stack([c[0] for c in cases]), jnp.stack([c[2] for c in cases])
  got = jax.jit(jax.vmap(lambda x, dy: onednn_ffi.grad("weights", x, dy, (3, 3, 3, 5),
                                                       **params)))(xs, dys)
  for i, (x, w, dy) in enumerate(cases):
    np.testing.assert_allclose(got[i], _grads(x, w, dy, **params)[1], rtol=1e-4, atol=1e-5)


def test_a_failure_inside_the_handler_is_an_xla_error():
  # A kernel shape that does not match the operands: oneDNN refuses it, and the
  # error must stop the program (not leave the result unwritten).
  x, _, dy = _case(4)
  bad = jax.jit(lambda x, dy: onednn_ffi.grad("weights", x, dy, (3, 3, 4, 5), (2, 2),
                                              ((1, 1), (1, 1))))
  with pytest.raises(Exception, match="vibe_jax oneDNN gradient"):
    jax.block_until_ready(bad(x, dy))


def test_each_parameter_set_registers_one_target():
  first = onednn_ffi._target("weights", (1, 1), ((0, 0), (0, 0)))
  assert onednn_ffi._target("weights", (1, 1), ((0, 0), (0, 0))) == first
  assert onednn_ffi._target("data", (1, 1), ((0, 0), (0, 0))) != first
