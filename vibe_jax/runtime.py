"""How the process runs JAX: the XLA flags and the persistent compilation cache,
each chosen in this one place.

`configure_xla_flags()` adds our CPU flags to the XLA_FLAGS environment variable;
it must run before JAX creates its backends (XLA reads the variable once), so
`python -m vibe_jax.main`, the benchmarks and the tests call it before anything
else, and code that imports vibe_jax pieces may call it first thing too. Every flag
here is an `xla_cpu_*` flag, read only by XLA's CPU compiler: GPU and TPU programs
compile exactly as without it (none was measured there). A flag the user already
put in XLA_FLAGS wins; VIBE_JAX_XLA_FLAGS=0 turns ours off altogether.

`configure_allocator()` makes glibc's malloc keep the host memory XLA's CPU
runtime frees for the next step instead of unmapping it (one arena, no mmap, no
trim): each step of a CPU run allocates its activations again (the small-CNN
M-step about 420 MB in buffers of 38-151 MB a batch of 256), and with glibc's
defaults every large buffer was mapped afresh and page-faulted: 30,000-54,000
faults a small-CNN step, 520,000-625,000 a ResNet-18 one. It applies only
on a glibc system where no accelerator plugin of JAX is installed, before the
first allocation of XLA's threads; VIBE_JAX_MALLOC=0 leaves the allocator alone.
The price: the process keeps its peak host memory until it ends.

`enable_compilation_cache()` turns on JAX's persistent compilation cache, so that a
second run of the same program (a rerun, a resumed run, the next seed of a sweep)
loads its compiled steps instead of compiling them again. Where: `--compilation_cache`
of `vibe_jax.main`, else VIBE_JAX_COMPILATION_CACHE, else
$XDG_CACHE_HOME/vibe_jax/jax (~/.cache/vibe_jax/jax); "off" turns it off.
"""

import contextlib
import ctypes
import importlib.abc
import importlib.util
import logging
import os
import pathlib
import sys

import jax  # importing creates no backend: XLA_FLAGS are read at the first use

__all__ = ["CPU_FLAGS", "configure_xla_flags", "xla_flags_in_effect", "configure_allocator",
           "compilation_cache_dir", "enable_compilation_cache", "lazy_modules"]

_log = logging.getLogger("vibe_jax")

# name -> (value, why), measured with benchmarks/train_step.py on a 2-core AMD EPYC
# (README "Performance").
CPU_FLAGS: dict[str, tuple[str, str]] = {
    # XLA's experimental YNNPACK fusions as jaxlib 0.10 has them by default (dots
    # and reductions) made the small-CNN M-step 2.2x and the ResNet-18 one 2.8x
    # slower on an AVX2 EPYC, the small-CNN one 1.9x on an AVX-512 one (425 against
    # 222 ms a batch); dots alone were slower too, eltwise with reduce 173 against
    # 143 ms. Its reductions alone are the fast part: a channel sum of a (262144, 32)
    # activation took 0.51 ms against 2.05 ms as a product with a ones vector and
    # 1.00 ms as XLA's own reduction, and BatchNorm's sums (models/layers.py) made
    # the small-CNN M-step 139 ms against 155 ms with the products (AVX-512 EPYC).
    "xla_cpu_experimental_ynn_fusion_type": (
        "reduce", "YNNPACK's reductions only: its dot fusions slowed the conv steps "
                  "2-3x, its reductions made BatchNorm's sums 3x faster"),
}


def xla_flags_in_effect(environ: dict[str, str] | None = None) -> str:
  """The XLA_FLAGS value `configure_xla_flags` sets, given `environ` (os.environ)."""
  environ = os.environ if environ is None else environ
  current = environ.get("XLA_FLAGS", "")
  if environ.get("VIBE_JAX_XLA_FLAGS", "1") == "0":
    return current
  given = {part.lstrip("-").split("=", 1)[0] for part in current.split()}
  ours = [f"--{name}={value}" for name, (value, _) in CPU_FLAGS.items()
          if name not in given]
  return " ".join([current, *ours]).strip()


def configure_xla_flags() -> str:
  """Sets XLA_FLAGS to `xla_flags_in_effect()` and returns it (call it before JAX
  runs anything: later it changes nothing for this process)."""
  value = xla_flags_in_effect()
  if value:
    os.environ["XLA_FLAGS"] = value
  return value


# mallopt's parameters (glibc's malloc.h) and the values `configure_allocator` sets.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_MALLOC_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim


def _accelerator_plugin_installed() -> bool:
  # JAX's GPU plugins live in the `jax_plugins` namespace package (and in
  # `jax_cuda*_plugin`), the TPU runtime is `libtpu`: a host with any of them
  # runs its steps on the accelerator, where the host allocator is not the cost.
  return any(importlib.util.find_spec(name) is not None
             for name in ("jax_plugins", "libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin"))


def configure_allocator(environ: dict[str, str] | None = None) -> bool:
  """Makes glibc's malloc reuse freed host memory (module docstring); returns whether
  it did. Call it first thing, before JAX runs anything."""
  environ = os.environ if environ is None else environ
  if environ.get("VIBE_JAX_MALLOC", "1") == "0":
    return False
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms.split(",")[0] != "cpu" and _accelerator_plugin_installed():
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  # glibc only
  except (OSError, AttributeError):
    return False  # another C library (macOS, musl): its allocator is left as it is
  return all(libc.mallopt(param, value) == 1 for param, value in _MALLOC_SETTINGS)


def compilation_cache_dir(flag: str | None = None,
                          environ: dict[str, str] | None = None) -> pathlib.Path | None:
  """Where the persistent compilation cache lives (module docstring), None if off."""
  environ = os.environ if environ is None else environ
  chosen = flag if flag is not None else environ.get("VIBE_JAX_COMPILATION_CACHE")
  if chosen is not None:
    return None if chosen.strip().lower() in ("", "off", "none", "0") else (
        pathlib.Path(chosen).expanduser())
  base = environ.get("XDG_CACHE_HOME") or str(pathlib.Path("~/.cache").expanduser())
  return pathlib.Path(base) / "vibe_jax" / "jax"


def enable_compilation_cache(flag: str | None = None) -> pathlib.Path | None:
  """Turns JAX's persistent compilation cache on at `compilation_cache_dir(flag)`
  for every compilation, however small (a short run is mostly small ones). A
  folder that cannot be made only costs the cache: one warning, the run goes on."""
  path = compilation_cache_dir(flag)
  if path is None:
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f"{path} is not writable")
  except OSError as error:
    _log.warning("compilation cache off: cannot use %s (%s)", path, error)
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


class _LazyFinder(importlib.abc.MetaPathFinder):
  """Finds `names` as the other finders do and hands them out lazily loaded."""

  def __init__(self, names: frozenset[str]):
    self._names = names

  def find_spec(self, fullname, path, target=None):
    if fullname not in self._names:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(fullname, path, target)
      if spec is not None:
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
          spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec
    return None


@contextlib.contextmanager
def lazy_modules(names: tuple[str, ...]):
  """Within the block, importing one of `names` (not yet imported) creates the
  module but runs its code only when one of its attributes is first read.

  For the heavy parts a dependency imports at its top and a run may never touch:
  ott-jax imports matplotlib.pyplot and scipy.stats (through ott.tools) at its top,
  1.2 s on this 2-core CPU, while the E-step only runs its Sinkhorn. A
  module that is touched loads in full at that moment, so nothing breaks.
  """
  finder = _LazyFinder(frozenset(n for n in names if n not in sys.modules))
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)
