"""`onednn_lib`'s convolution gradients as XLA FFI calls, for `onednn_conv`.

A host callback (`jax.pure_callback` and what it lowers to) hands its operands to
Python as copies: 1.3-1.8 ms for a 20 MB pair of operands with a callback that
does nothing, and the small CNN's step has five such calls. An XLA FFI handler
gets the addresses of XLA's own buffers instead. The handler here is a ctypes
function (no compiled extension to build): it reads XLA's call frame (the C
structs of `xla/ffi/api/c_api.h`, API 0.3, which jaxlib ships in
`jax.ffi.include_dir()`), wraps the buffers as NumPy views and lets oneDNN write
the result in place. It answers XLA's metadata query with the API version it was
written against, as the C++ handlers do, and turns a Python exception into an
XLA error (so the program fails with the message instead of returning garbage).

One FFI target is registered per (gradient, strides, padding); the shapes come
with the buffers. `grad` is the entry point; `onednn_conv.grads_available`
checks the whole path once per process against XLA.
"""

import ctypes
import functools

import jax
import numpy as np

from vibe_jax.models import onednn_lib

__all__ = ["grad"]

# c_api.h: XLA_FFI_Extension_Metadata, XLA_FFI_ExecutionStage_EXECUTE,
# XLA_FFI_DataType_F32, XLA_FFI_Error_Code_INTERNAL, XLA_FFI_API_MAJOR/MINOR.
_METADATA_EXTENSION, _EXECUTE, _F32, _INTERNAL = 1, 3, 11, 13
_API_VERSION = (0, 3)


class _ExtensionBase(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
              ("next", ctypes.c_void_p)]


class _ApiVersion(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Metadata(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion),
              ("traits", ctypes.c_uint32), ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
  _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("dtype", ctypes.c_int), ("data", ctypes.c_void_p), ("rank", ctypes.c_int64),
              ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Buffers(ctypes.Structure):
  """XLA_FFI_Args and XLA_FFI_Rets (the same layout)."""
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("size", ctypes.c_int64), ("types", ctypes.c_void_p),
              ("items", ctypes.POINTER(ctypes.POINTER(_Buffer)))]


class _Attrs(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("size", ctypes.c_int64), ("types", ctypes.c_void_p),
              ("names", ctypes.c_void_p), ("attrs", ctypes.c_void_p)]


class _CallFrame(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t),
              ("extension_start", ctypes.POINTER(_ExtensionBase)),
              ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int),
              ("args", _Buffers), ("rets", _Buffers), ("attrs", _Attrs),
              ("future", ctypes.c_void_p)]


class _ErrorCreateArgs(ctypes.Structure):
  _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
              ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


_HANDLER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))
_ERROR_CREATE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorCreateArgs))
# XLA_FFI_Api: struct_size, extension_start, api_version (24 bytes), internal_api,
# then the XLA_FFI_Error_Create function pointer.
_ERROR_CREATE_OFFSET = 8 + 8 + ctypes.sizeof(_ApiVersion) + 8
# XLA_FFI_STRUCT_SIZE(XLA_FFI_Metadata, traits): the part every version has.
_METADATA_SIZE = _Metadata.traits.offset + ctypes.sizeof(ctypes.c_uint32)
_handlers = []  # the ctypes functions XLA calls; they must outlive every program


def _error(api: int, message: str) -> int:
  """An XLA_FFI_Error made by XLA's own constructor (XLA owns and frees it)."""
  create = _ERROR_CREATE(ctypes.c_void_p.from_address(api + _ERROR_CREATE_OFFSET).value)
  args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message.encode(), _INTERNAL)
  return create(ctypes.byref(args))


def _view(buffer: _Buffer) -> np.ndarray:
  if buffer.dtype != _F32:
    raise TypeError(f"oneDNN gradients take float32, got XLA dtype {buffer.dtype}")
  shape = tuple(buffer.dims[i] for i in range(buffer.rank))
  return np.ctypeslib.as_array(ctypes.cast(buffer.data, ctypes.POINTER(ctypes.c_float)),
                               shape=shape)


def _handler(run):
  """An FFI handler that calls `run(args, results)` on NumPy views of the buffers."""

  def handle(frame_pointer):
    frame = frame_pointer.contents
    try:
      extension = frame.extension_start
      if extension and extension.contents.type == _METADATA_EXTENSION:
        metadata = ctypes.cast(extension, ctypes.POINTER(_MetadataExtension)).contents.metadata
        if metadata.contents.struct_size < _METADATA_SIZE:
          raise RuntimeError("XLA's FFI metadata is older than this handler")
        metadata.contents.api_version = _ApiVersion(ctypes.sizeof(_ApiVersion), None,
                                                    *_API_VERSION)
        metadata.contents.traits = 0
        if metadata.contents.struct_size >= ctypes.sizeof(_Metadata):
          metadata.contents.state_type_id = 0  # XLA_FFI_UNKNOWN_TYPE_ID: no state
        return None
      if frame.stage != _EXECUTE:
        return None
      run([_view(frame.args.items[i].contents) for i in range(frame.args.size)],
          [_view(frame.rets.items[i].contents) for i in range(frame.rets.size)])
      return None
    except Exception as error:  # pylint: disable=broad-except
      # Raised into C it would be printed and dropped, and XLA would go on with
      # an unwritten result.
      return _error(frame.api, f"vibe_jax oneDNN gradient: {type(error).__name__}: {error}")

  return _HANDLER(handle)


@functools.cache
def _target(kind: str, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> str:
  """Registers (once) and names the FFI target of one gradient's parameters."""
  name = "vibe_jax_onednn_{}_grad_s{}_{}_p{}_{}_{}_{}".format(kind, *strides, *padding[0],
                                                              *padding[1])

  def run(args, results):
    a, b = args
    (out,) = results
    if kind == "weights":
      onednn_lib.conv_weight_grad(a, b, kernel=out.shape[:2], strides=strides,
                                  padding=padding, out=out)
    else:
      onednn_lib.conv_input_grad(a, b, input_shape=out.shape, strides=strides,
                                 padding=padding, out=out)

  handler = _handler(run)
  _handlers.append(handler)
  jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
  return name


def grad(kind: str, a: jax.Array, b: jax.Array, shape: tuple[int, ...],
         strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """A convolution's gradient on oneDNN, inside or outside jit: of the HWIO kernel
  (`kind` "weights"; `a` the NHWC input, `b` the output gradient) or of the NHWC
  input ("data"; `a` the output gradient, `b` the kernel). `shape` is the result's;
  padding non-negative (low, high) pairs. Under vmap, one call per example."""
  name = _target(kind, tuple(strides), tuple(map(tuple, padding)))
  return jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(tuple(shape), a.dtype),
                          vmap_method="sequential")(a, b)
