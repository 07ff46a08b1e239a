"""`onednn_lib`'s convolution gradients equal XLA's, are safe to call from
several threads, and the module reports itself unavailable where it cannot run."""

import platform
import threading

import jax
import numpy as np
import pytest

from vibe_jax.models import onednn_lib

NHWC = ("NHWC", "HWIO", "NHWC")
linux_x86 = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the onednn-cpu-gomp wheel exists for Linux x86-64 only")


def _xla_grads(x, w, dy, strides, padding):
  _, vjp = jax.vjp(lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=NHWC), x, w)
  return [np.asarray(g) for g in vjp(dy)]


def _case(rng, n, size, channels, kernel, strides, padding):
  x = rng.standard_normal((n, *size, channels[0])).astype(np.float32)
  w = rng.standard_normal((*kernel, *channels)).astype(np.float32)
  out = [(s + lo + hi - k) // st + 1
         for s, (lo, hi), k, st in zip(size, padding, kernel, strides)]
  dy = rng.standard_normal((n, *out, channels[1])).astype(np.float32)
  return x, w, dy


@linux_x86
def test_available_where_the_wheel_is_installed():
  # The package depends on the wheel on Linux x86-64: if it stops loading (or
  # its self-check fails) the weight gradients silently go back to XLA's.
  assert onednn_lib.library_path() is not None
  assert onednn_lib.available()


@linux_x86
@pytest.mark.parametrize("kernel,strides,padding,size,channels", [
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (8, 8), (16, 32)),    # ResNet's 3x3
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (8, 8), (16, 32)),    # strided, even size
    ((1, 1), (2, 2), ((0, 0), (0, 0)), (8, 8), (16, 32)),    # the 1x1 shortcut
    ((7, 7), (2, 2), ((3, 3), (3, 3)), (13, 11), (3, 8)),    # ImageNet stem, odd sizes
    ((3, 2), (1, 2), ((2, 0), (1, 2)), (9, 10), (5, 7)),     # asymmetric everything
    ((3, 3), (1, 1), ((3, 1), (0, 1)), (6, 6), (4, 4)),      # padding beyond k - 1
])
def test_both_gradients_equal_xla(kernel, strides, padding, size, channels):
  rng = np.random.default_rng(0)
  x, w, dy = _case(rng, 3, size, channels, kernel, strides, padding)
  want_dx, want_dw = _xla_grads(x, w, dy, strides, padding)
  dw = onednn_lib.conv_weight_grad(x, dy, kernel=kernel, strides=strides, padding=padding)
  dx = onednn_lib.conv_input_grad(dy, w, input_shape=x.shape, strides=strides,
                                  padding=padding)
  for got, want in ((dw, want_dw), (dx, want_dx)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@linux_x86
def test_threads_calling_at_once_get_their_own_results():
  # XLA may run two callbacks at once on its worker threads; calls share one
  # stream and per-shape memory objects, so they must not mix.
  rng = np.random.default_rng(1)
  params = dict(strides=(1, 1), padding=((1, 1), (1, 1)))
  cases = [_case(rng, 4, (12, 12), (8, 8), (3, 3), **params) for _ in range(6)]
  wants = [_xla_grads(*case, **params)[::-1] for case in cases]
  gots = [None] * len(cases)

  def run(i):
    x, w, dy = cases[i]
    for _ in range(5):
      gots[i] = (onednn_lib.conv_weight_grad(x, dy, kernel=(3, 3), **params),
                 onednn_lib.conv_input_grad(dy, w, input_shape=x.shape, **params))

  threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  for got, want in zip(gots, wants):
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_reloaded_library_runs_its_own_primitives():
  # Clearing the library (as the tests below do) must not leave primitives of the
  # old engine to be run on the new one's stream (oneDNN refuses: status 2).
  rng = np.random.default_rng(5)
  params = dict(strides=(1, 1), padding=((1, 1), (1, 1)))
  x, w, dy = _case(rng, 2, (6, 6), (3, 4), (3, 3), **params)
  want = onednn_lib.conv_weight_grad(x, dy, kernel=(3, 3), **params)
  onednn_lib._library.cache_clear()
  np.testing.assert_array_equal(onednn_lib.conv_weight_grad(x, dy, kernel=(3, 3), **params),
                                want)


def test_unavailable_without_the_library(monkeypatch):
  monkeypatch.setattr(onednn_lib, "library_path", lambda: None)
  onednn_lib._library.cache_clear()
  onednn_lib.available.cache_clear()
  try:
    assert not onednn_lib.available()
  finally:
    onednn_lib._library.cache_clear()
    onednn_lib.available.cache_clear()


def test_unavailable_when_the_environment_says_so(monkeypatch):
  monkeypatch.setenv("VIBE_JAX_ONEDNN_CONV", "0")
  onednn_lib.available.cache_clear()
  try:
    assert not onednn_lib.available()
  finally:
    onednn_lib.available.cache_clear()


def test_unavailable_when_the_self_check_fails(monkeypatch):
  # A library that loads but computes something else must not be used.
  monkeypatch.setattr(onednn_lib, "conv_weight_grad",
                      lambda x, dy, **kwargs: np.zeros((*kwargs["kernel"], x.shape[3],
                                                        dy.shape[3]), np.float32))
  onednn_lib.available.cache_clear()
  try:
    assert not onednn_lib.available()
  finally:
    onednn_lib.available.cache_clear()
