"""oneDNN's convolution backward kernels, called from Python, for `onednn_conv`.

jaxlib's oneDNN thunk runs forward convolutions only, so a convolution's weight
gradient was XLA's own: Eigen kernels fed by layout copies that put the batch
last (two transposes of the activations per convolution). This module calls the
weight-gradient kernel of oneDNN itself (the library PyTorch's CPU convolutions
use), from the `onednn-cpu-gomp` wheel (oneDNN 3.2 built with GNU OpenMP, a
dependency on Linux x86-64), through its C API with ctypes; `onednn_conv` runs it
inside jit as an XLA FFI call (`onednn_ffi`) on the activations and the output
gradient as they are (NHWC, described to oneDNN by strides: no layout copies) and
gets the kernel's gradient back as HWIO. The input gradient of a strided
convolution (`conv_input_grad`) goes the same way.

Measured on a 2-core AMD EPYC (AVX-512), batch 128, 64 -> 64 channels at 32x32,
a BatchNorm-ReLU before the convolution as in the models: weight gradient 58 ms
against XLA's 107 ms (PyTorch channels-last's alone: 47 ms; oneDNN's alone here
49-54 ms). Input gradient of a 3x3 stride-2 convolution 64 -> 128 channels from
32x32: 57 against XLA's 100 ms.

`available()` is false, and `onednn_conv` keeps XLA's gradients, when the
wheel is not installed, the library does not load, the environment says
VIBE_JAX_ONEDNN_CONV=0, or a small check against a direct sum fails.
Calls are serialised by a lock: one oneDNN stream and one set of memory objects
per shape are shared, and each call already uses every core.
"""

import ctypes
import functools
import importlib.metadata
import logging
import os
import pathlib
import threading

import numpy as np

__all__ = ["available", "library_path", "conv_weight_grad", "conv_input_grad", "ENV_SWITCH"]

ENV_SWITCH = "VIBE_JAX_ONEDNN_CONV"  # "0" turns oneDNN off here and in onednn_conv

_log = logging.getLogger("vibe_jax")
_DIST = "onednn-cpu-gomp"
# oneDNN C API constants (dnnl_types.h / dnnl_common_types.h of oneDNN 3.x).
_CPU_ENGINE, _IN_ORDER_STREAM, _F32, _ANY_FORMAT = 1, 1, 3, 1
_FORWARD_TRAINING, _CONVOLUTION_DIRECT = 64, 1
_QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD = 131, 132
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_DIFF_SRC = 1, 17, 33, 129
_ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 145, 161
_Dims = ctypes.c_int64 * 12  # dnnl_dims_t (DNNL_MAX_NDIMS = 12)
_lock = threading.Lock()


class _Arg(ctypes.Structure):
  _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


def library_path() -> pathlib.Path | None:
  """Where the installed `onednn-cpu-gomp` wheel put libdnnl.so.3, or None."""
  try:
    dist = importlib.metadata.distribution(_DIST)
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in dist.files or ():
    if file.name == "libdnnl.so.3":
      path = pathlib.Path(dist.locate_file(file)).resolve()
      return path if path.is_file() else None
  return None


def _dims(*values):
  dims = _Dims()
  for i, value in enumerate(values):
    dims[i] = value
  return dims


class _Library:
  """The loaded library with one CPU engine and one in-order stream."""

  def __init__(self, path: pathlib.Path):
    self.dll = ctypes.CDLL(str(path))
    self.dll.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
    self.dll.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
    self.engine = self.new("dnnl_engine_create", _CPU_ENGINE, 0)
    self.stream = self.new("dnnl_stream_create", self.engine, _IN_ORDER_STREAM)
    # Primitives belong to this engine: kept here, not in a global cache, so that
    # a new library object never runs another engine's primitive (oneDNN's
    # invalid-argument error at execution).
    self.plans = {}

  def call(self, name, *args):
    status = getattr(self.dll, name)(*args)
    if status != 0:
      raise RuntimeError(f"oneDNN {name} failed with status {status}")

  def new(self, name, *args):
    """Calls a `dnnl_*_create` function and returns the handle it made."""
    handle = ctypes.c_void_p()
    self.call(name, ctypes.byref(handle), *args)
    return handle

  def strided(self, dims, strides):
    """A float32 memory descriptor with oneDNN's logical `dims` laid out by `strides`."""
    return self.new("dnnl_memory_desc_create_with_strides", len(dims), _dims(*dims), _F32,
                    _dims(*strides))

  def memory(self, desc, pointer):
    return self.new("dnnl_memory_create", desc, self.engine, ctypes.c_void_p(pointer))


def _descriptors(lib, x_shape, dy_shape, kernel, strides, padding):
  """Memory descriptors (NHWC input and output, HWIO kernel), the convolution's
  parameters, and the forward primitive descriptor oneDNN wants as a hint."""
  n, h, w, ci = x_shape
  _, ho, wo, co = dy_shape
  kh, kw = kernel
  # oneDNN's dims are (N, C, H, W) and (O, I, KH, KW); strides say NHWC and HWIO.
  src = lib.strided((n, ci, h, w), (h * w * ci, 1, w * ci, ci))
  dst = lib.strided((n, co, ho, wo), (ho * wo * co, 1, wo * co, co))
  hwio = lib.strided((co, ci, kh, kw), (1, co, kw * ci * co, ci * co))
  (top, bottom), (left, right) = padding
  params = (_dims(*strides), _dims(0, 0), _dims(top, left), _dims(bottom, right))
  forward = lib.new("dnnl_convolution_forward_primitive_desc_create", lib.engine,
                    _FORWARD_TRAINING, _CONVOLUTION_DIRECT, src, hwio, None, dst, *params, None)
  # The kernel in whatever layout oneDNN's fast kernels want (blocked), reordered
  # from or to HWIO around the call.
  blocked = lib.new("dnnl_memory_desc_create_with_tag", 4, _dims(co, ci, kh, kw), _F32,
                    _ANY_FORMAT)
  return src, dst, hwio, blocked, params, forward


class _Plan:
  """One gradient's primitive for one shape, the reorder of the kernel between
  HWIO and oneDNN's blocked layout, and the memory objects of a call."""

  def __init__(self, lib, kind, x_shape, dy_shape, kernel, strides, padding):
    src, dst, hwio, blocked, params, forward = _descriptors(lib, x_shape, dy_shape, kernel,
                                                            strides, padding)
    if kind == "weights":
      desc = lib.new("dnnl_convolution_backward_weights_primitive_desc_create", lib.engine,
                     _CONVOLUTION_DIRECT, src, blocked, None, dst, *params, forward, None)
      query = _QUERY_DIFF_WEIGHTS_MD
    else:
      desc = lib.new("dnnl_convolution_backward_data_primitive_desc_create", lib.engine,
                     _CONVOLUTION_DIRECT, src, blocked, dst, *params, forward, None)
      query = _QUERY_WEIGHTS_MD
    self.primitive = lib.new("dnnl_primitive_create", desc)
    chosen = ctypes.c_void_p(lib.dll.dnnl_primitive_desc_query_md(desc, query, 0))
    self.blocked = np.empty(lib.dll.dnnl_memory_desc_get_size(chosen) // 4, np.float32)
    reorder = lib.new("dnnl_reorder_primitive_desc_create", *(
        (chosen, lib.engine, hwio, lib.engine) if kind == "weights" else
        (hwio, lib.engine, chosen, lib.engine)), None)
    self.reorder = lib.new("dnnl_primitive_create", reorder)
    # Memory objects made once; the data pointers are set per call.
    self.src, self.dst, self.hwio = (lib.memory(d, 1) for d in (src, dst, hwio))
    kernel_memory = lib.memory(chosen, self.blocked.ctypes.data)
    if kind == "weights":
      self.steps = ((self.primitive, (_Arg * 3)(_Arg(_ARG_SRC, self.src),
                                                _Arg(_ARG_DIFF_DST, self.dst),
                                                _Arg(_ARG_DIFF_WEIGHTS, kernel_memory))),
                    (self.reorder, (_Arg * 2)(_Arg(_ARG_SRC, kernel_memory),
                                              _Arg(_ARG_DST, self.hwio))))
    else:
      self.steps = ((self.reorder, (_Arg * 2)(_Arg(_ARG_SRC, self.hwio),
                                              _Arg(_ARG_DST, kernel_memory))),
                    (self.primitive, (_Arg * 3)(_Arg(_ARG_DIFF_DST, self.dst),
                                                _Arg(_ARG_WEIGHTS, kernel_memory),
                                                _Arg(_ARG_DIFF_SRC, self.src))))

  def run(self, lib, src, dst, hwio):
    """Runs the gradient with these arrays as input, output gradient and kernel
    (whichever is the result is written)."""
    for memory, array in ((self.src, src), (self.dst, dst), (self.hwio, hwio)):
      lib.call("dnnl_memory_set_data_handle", memory, ctypes.c_void_p(array.ctypes.data))
    for primitive, args in self.steps:
      lib.call("dnnl_primitive_execute", primitive, lib.stream, len(args), args)
    lib.call("dnnl_stream_wait", lib.stream)


@functools.cache
def _library() -> _Library | None:
  path = library_path()
  if path is None:
    return None
  try:
    return _Library(path)
  except (OSError, AttributeError, RuntimeError):
    return None


def conv_weight_grad(x: np.ndarray, dy: np.ndarray, *, kernel: tuple[int, int],
                     strides: tuple[int, int],
                     padding: tuple[tuple[int, int], tuple[int, int]],
                     out: np.ndarray | None = None) -> np.ndarray:
  """The HWIO gradient of a convolution's kernel, given its NHWC input `x` and the
  gradient `dy` of its NHWC output (float32; no dilation, one feature group).

  `padding`: (low, high) pairs, non-negative, as `lax.conv_general_dilated` reads
  them. `out`, a C-contiguous float32 array of the result's shape, receives it.
  Needs `available()`.
  """
  x = np.ascontiguousarray(x, np.float32)
  dy = np.ascontiguousarray(dy, np.float32)
  out = _output(out, (*kernel, x.shape[3], dy.shape[3]))
  _run("weights", x, dy, out, strides, padding)
  return out


def conv_input_grad(dy: np.ndarray, w: np.ndarray, *, input_shape: tuple[int, ...],
                    strides: tuple[int, int],
                    padding: tuple[tuple[int, int], tuple[int, int]],
                    out: np.ndarray | None = None) -> np.ndarray:
  """The NHWC gradient of a convolution's input of `input_shape`, given the HWIO
  kernel `w` and the gradient `dy` of its NHWC output (float32; no dilation, one
  feature group). `padding` and `out` as in `conv_weight_grad`. Needs
  `available()`."""
  dy = np.ascontiguousarray(dy, np.float32)
  w = np.ascontiguousarray(w, np.float32)
  out = _output(out, tuple(input_shape))
  _run("data", out, dy, w, strides, padding)
  return out


def _output(out, shape):
  if out is None:
    return np.empty(shape, np.float32)
  if out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous:
    raise ValueError(f"out must be a C-contiguous float32 array of shape {tuple(shape)}, "
                     f"got {out.dtype} {out.shape}")
  return out


def _run(kind, x, dy, w, strides, padding):
  lib = _library()
  key = (kind, x.shape, dy.shape, w.shape[:2], tuple(strides), tuple(map(tuple, padding)))
  with _lock:
    if key not in lib.plans:
      lib.plans[key] = _Plan(lib, *key)
    lib.plans[key].run(lib, x, dy, w)


def _direct(x, dy, w, strides, padding):
  """Both gradients as plain sums over kernel offsets (the self-check)."""
  kh, kw = w.shape[:2]
  ho, wo = dy.shape[1:3]
  xp = np.pad(x.astype(np.float64), ((0, 0), *padding, (0, 0)))
  dxp = np.zeros_like(xp)
  dw = np.zeros(w.shape, np.float64)
  for i in range(kh):
    for j in range(kw):
      window = (slice(None), slice(i, i + (ho - 1) * strides[0] + 1, strides[0]),
                slice(j, j + (wo - 1) * strides[1] + 1, strides[1]))
      dw[i, j] = np.einsum("nhwc,nhwo->co", xp[window], dy)
      dxp[window] += np.einsum("nhwo,co->nhwc", dy, w[i, j])
  (top, _), (left, _) = padding
  return dw, dxp[:, top:top + x.shape[1], left:left + x.shape[2]]


@functools.cache
def available() -> bool:
  """Whether `conv_weight_grad` can run in this process (module docstring),
  decided on first use and kept."""
  if os.environ.get(ENV_SWITCH, "1") == "0" or _library() is None:
    return False
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
  dy = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
  w = rng.standard_normal((3, 2, 3, 5)).astype(np.float32)
  # Asymmetric in every respect, so that a mix-up of axes shows.
  params = dict(strides=(2, 2), padding=((1, 2), (0, 1)))
  try:
    dw = conv_weight_grad(x, dy, kernel=w.shape[:2], **params)
    dx = conv_input_grad(dy, w, input_shape=x.shape, **params)
  except RuntimeError as error:
    _log.info("oneDNN convolution gradients unavailable (%s); XLA's run instead", error)
    return False
  want_dw, want_dx = _direct(x, dy, w, **params)
  return bool(np.allclose(dw, want_dw, rtol=1e-4, atol=1e-4) and
              np.allclose(dx, want_dx, rtol=1e-4, atol=1e-4))
