"""2-D convolutions on oneDNN's CPU kernels, the ones PyTorch uses, from inside jit.

XLA's CPU backend runs `lax.conv_general_dilated` on Eigen's convolution kernels,
which are what kept our CPU training steps behind PyTorch's (benchmarks/
conv_layers.py). jaxlib's XLA also carries oneDNN and a thunk that runs a
convolution custom call named `__onednn$convolution` on it (its own rewriter
left our models' convolutions alone even under `xla_cpu_use_onednn`). `conv`
emits that custom call itself for the forward convolution and the input gradient of a
stride-1 one (a forward convolution of the output gradient with the flipped
kernel). The thunk runs forward convolutions only, and a weight gradient written
as one (batch as channels, a 32x32 kernel, a 3x3 output) fell on oneDNN's slow
paths (220 against 68 ms, 64 channels at 32x32, batch 128), so the weight
gradient, and the input gradient of a strided convolution, run on oneDNN's own
backward kernels as XLA FFI calls (`onednn_lib`, `onednn_ffi`), and are XLA's
where that library is missing (`grads_available()`).

Measured on a 2-core AMD EPYC (AVX-512), batch 128, 64 -> 64 channels at 32x32:
forward 42 ms against XLA's 54 ms (PyTorch channels-last: 42 ms), input gradient
42 against 54 ms (PyTorch 42.5 ms); the host gradients in `onednn_lib`. Results
equal XLA's to float rounding (1e-6 relative; the sums run in another order).

When it applies (`available()`, checked once per process): the default backend is
the CPU with one device (under a multi-device mesh XLA's partitioner would
gather a custom call's operands onto every device), the machine is x86-64, the
custom call compiles and gives `lax`'s result on a small case (so a jaxlib whose
XLA lacks oneDNN, or reads the config differently, falls back instead of
failing), and the environment does not say VIBE_JAX_ONEDNN_CONV=0. Each call also
needs float32 NHWC/HWIO operands, no dilation and one feature group; anything
else goes to `lax.conv_general_dilated`. Under vmap the primitives run as `lax` on
the batched operands; forward-mode differentiation (jvp) is not defined (a
custom_vjp).

Cost: jaxlib cannot serialise a CPU program holding this custom call, so programs
with these convolutions are compiled in every process instead of coming from the
persistent compilation cache; `available()` silences JAX's warning about it.
"""

import functools
import json
import logging
import os
import platform
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import batching, mlir

from vibe_jax.models import onednn_ffi, onednn_lib

__all__ = ["available", "conv", "grads_available", "ENV_SWITCH"]

ENV_SWITCH = onednn_lib.ENV_SWITCH
_TARGET = "__onednn$convolution"
_CACHE_WARNING = r"Error writing persistent compilation cache entry for .*std::bad_alloc"
_log = logging.getLogger("vibe_jax")
_NHWC = (0, 3, (1, 2))  # batch, feature, spatial axes of an NHWC array
_HWIO = (2, 3, (0, 1))  # input feature, output feature, spatial axes of HWIO
_HWOI = (3, 2, (0, 1))  # the same kernel read with its two feature axes swapped

_conv_p = Primitive("onednn_convolution")


def _out_shape(x_shape, w_shape, strides, padding, kernel):
  window = [w_shape[axis] for axis in kernel[2]]
  spatial = [(size + lo + hi - k) // s + 1
             for size, (lo, hi), k, s in zip(x_shape[1:3], padding, window, strides)]
  return (x_shape[0], *spatial, w_shape[kernel[1]])


def _abstract_eval(x, w, *, strides, padding, kernel):
  return jax.core.ShapedArray(_out_shape(x.shape, w.shape, strides, padding, kernel), x.dtype)


def _config(strides, padding, kernel) -> str:
  """The custom call's backend config: XLA's CPU BackendConfig proto as JSON."""
  data = {"batch_dim": _NHWC[0], "feature_dim": _NHWC[1], "spatial_dims": list(_NHWC[2])}
  return json.dumps({"onednn_conv_config": {
      "dims": 4,
      "input": {"dims": 4, "data": data},
      "kernel": {"dims": 4, "filter": {"input_feature_dim": kernel[0],
                                       "output_feature_dim": kernel[1],
                                       "spatial_dims": list(kernel[2])}},
      "output": {"dims": 4, "data": data},
      "window": {"strides": list(strides), "pad_left": [lo for lo, _ in padding],
                 "pad_right": [hi for _, hi in padding], "window_dilations": [1, 1]},
      "feature_groups": 1}})


def _lower(ctx, x, w, *, strides, padding, kernel):
  out_type = mlir.aval_to_ir_type(ctx.module_context, ctx.avals_out[0])
  i32 = ir.IntegerType.get_signless(32)
  op = stablehlo.CustomCallOp([out_type], [x, w], call_target_name=_TARGET,
                              backend_config=ir.StringAttr.get(_config(strides, padding, kernel)),
                              api_version=ir.IntegerAttr.get(i32, 1))
  return op.results


def _reference(x, w, *, strides, padding, kernel):
  """What the primitive computes, in `lax` (vmap, the self-check, and the
  gradients left to XLA)."""
  spec = "HWIO" if kernel == _HWIO else "HWOI"
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=("NHWC", spec, "NHWC"))


def _batch(args, dims, **params):
  # An unbatched operand's dimension is None.
  return jax.vmap(functools.partial(_reference, **params), tuple(dims))(*args), 0


@functools.cache
def _jitted(primitive, **params):
  return jax.jit(functools.partial(primitive.bind, **params))


def _eager(primitive, *args, **params):
  # Outside jit, a primitive runs as a one-op jitted program (as lax's do), one
  # per set of parameters.
  return _jitted(primitive, **params)(*args)


_conv_p.def_impl(functools.partial(_eager, _conv_p))
_conv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(_conv_p, _lower, platform="cpu")
batching.primitive_batchers[_conv_p] = _batch


def _bind(x, w, strides, padding, kernel=_HWIO):
  return _conv_p.bind(x, w, strides=tuple(strides), padding=tuple(map(tuple, padding)),
                      kernel=kernel)


def _grad_reference(a, b, *, kind, shape, strides, padding):
  """XLA's gradient: of the kernel (`kind` "weights", operands input and output
  gradient) or of the input ("data", operands output gradient and kernel), `shape`
  being the result's. The forward it traces is dead code XLA removes."""
  conv = functools.partial(_reference, strides=strides, padding=padding, kernel=_HWIO)
  zeros = jnp.zeros(shape, a.dtype)
  if kind == "weights":
    return jax.vjp(lambda w: conv(a, w), zeros)[1](b)[0]
  return jax.vjp(lambda x: conv(x, b), zeros)[1](a)[0]


@functools.cache
def grads_available() -> bool:
  """Whether `conv`'s weight gradients and strided input gradients run on oneDNN
  (`onednn_lib`, as XLA FFI calls: `onednn_ffi`) in this process, decided on first
  use and kept."""
  if not onednn_lib.available():
    return False
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
  w = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
  g = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
  params = dict(strides=(2, 2), padding=((1, 1), (0, 1)))
  try:
    with jax.ensure_compile_time_eval():
      for kind, a, b, shape in (("weights", x, g, w.shape), ("data", g, w, x.shape)):
        call = functools.partial(onednn_ffi.grad, kind, shape=shape, **params)
        got = np.asarray(jax.jit(call)(a, b))
        want = np.asarray(_grad_reference(a, b, kind=kind, shape=shape, **params))
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
          return False
  except Exception:  # pylint: disable=broad-except
    # This jaxlib's FFI differs: XLA's gradients still work.
    return False
  return True


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x, w, strides, padding):
  return _bind(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
  return _bind(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, g):
  x, w = residuals
  on_host = grads_available() and all(lo >= 0 and hi >= 0 for lo, hi in padding)
  if on_host:
    dw = onednn_ffi.grad("weights", x, g, w.shape, strides, padding)
  else:
    dw = _grad_reference(x, g, kind="weights", shape=w.shape, strides=strides, padding=padding)
  kh, kw = w.shape[:2]
  # A stride-1 convolution's input gradient is the forward convolution of the
  # output gradient with the kernel flipped in space and its feature axes swapped
  # (read as HWOI: no transpose), padded by k - 1 - pad on each side, which XLA's
  # oneDNN thunk runs; others (strided, or a padding beyond k - 1) on the host.
  flipped_pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding)]
  if tuple(strides) == (1, 1) and all(lo >= 0 and hi >= 0 for lo, hi in flipped_pads):
    dx = _bind(g, w[::-1, ::-1], (1, 1), flipped_pads, kernel=_HWOI)
  elif on_host:
    dx = onednn_ffi.grad("data", g, w, x.shape, strides, padding)
  else:
    dx = _grad_reference(g, w, kind="data", shape=x.shape, strides=strides, padding=padding)
  return dx, dw


_conv_nhwc.defvjp(_conv_fwd, _conv_bwd)


@functools.cache
def available() -> bool:
  """Whether `conv` runs on oneDNN in this process (module docstring), decided on
  first use and kept."""
  if os.environ.get(ENV_SWITCH, "1") == "0" or platform.machine().lower() not in (
      "x86_64", "amd64"):
    return False
  try:
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
      return False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    pads = ((1, 1), (0, 2))  # asymmetric, so that a mix-up of axes shows
    # Usually first called while a model is being traced: run the check outside
    # that trace, on concrete values.
    with jax.ensure_compile_time_eval(), warnings.catch_warnings():
      warnings.filterwarnings("ignore", category=UserWarning, message=_CACHE_WARNING)
      got = np.asarray(jax.jit(lambda x, w: _bind(x, w, (1, 2), pads))(x, w))
      want = np.asarray(_reference(x, w, strides=(1, 2), padding=pads, kernel=_HWIO))
    ok = got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-4))
  except Exception:  # pylint: disable=broad-except
    # Any failure means this jaxlib cannot run it: XLA's convolutions still can.
    return False
  if ok:
    # jaxlib cannot serialise a CPU program holding this custom call: JAX warns
    # "Error writing persistent compilation cache entry ... std::bad_alloc" at
    # each compilation and runs it uncached. Said once here instead.
    warnings.filterwarnings("ignore", category=UserWarning, message=_CACHE_WARNING)
    _log.info("convolutions run on oneDNN (%s=0 turns that off); programs holding them "
              "are not kept in the persistent compilation cache", ENV_SWITCH)
  return ok


def _applies(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
             feature_group_count, batch_group_count, precision,
             preferred_element_type) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
    return False
  if preferred_element_type not in (None, jnp.float32) or precision is not None:
    return False
  if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(d != 1 for d in (rhs_dilation or (1, 1))):
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  return dn == nhwc and available()


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, on oneDNN where it applies (module docstring).

  Same arguments (Flax's `nn.Conv(..., conv_general_dilated=conv)` passes them);
  padding as (low, high) pairs or "SAME" / "VALID".
  """
  if _applies(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, precision, preferred_element_type):
    if isinstance(padding, str):  # "SAME" or "VALID", as lax reads them
      padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return _conv_nhwc(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)))
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
