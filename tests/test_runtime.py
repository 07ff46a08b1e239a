"""The process settings of vibe_jax.runtime: XLA flags, compilation cache, lazy
imports."""

import pathlib
import subprocess
import sys

from tests.helpers import ROOT
from vibe_jax import runtime


def test_xla_flags_add_ours_keep_the_users_and_switch_off():
  ours = runtime.xla_flags_in_effect({})
  assert all(f"--{name}=" in ours for name in runtime.CPU_FLAGS)
  assert all(name.startswith("xla_cpu_") for name in runtime.CPU_FLAGS)  # CPU only
  user = "--xla_cpu_experimental_ynn_fusion_type=dot --xla_force_host_platform_device_count=8"
  got = runtime.xla_flags_in_effect({"XLA_FLAGS": user})
  assert got.startswith(user) and got.count("ynn_fusion_type") == 1  # the user's wins
  assert runtime.xla_flags_in_effect({"XLA_FLAGS": "--a=1", "VIBE_JAX_XLA_FLAGS": "0"}) == "--a=1"


_FAULTS = """
import ctypes, resource, sys
from vibe_jax import runtime
applied = runtime.configure_allocator() if sys.argv[1] == "on" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def faults_of_one_buffer(size=100 * 2**20):  # as XLA's runtime allocates a step's buffers
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  buffer = libc.malloc(size)
  ctypes.memset(buffer, 1, size)
  libc.free(buffer)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()
print(applied, faults_of_one_buffer())
"""


def test_the_allocator_reuses_freed_buffers_instead_of_faulting_them_in_again():
  runs = {}
  for mode in ("on", "off"):
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    runs[mode] = (out[0], int(out[1]))
  assert runs["on"][0] == "True"
  assert runs["off"][1] > 20_000  # 25,600 pages of 4 KiB mapped and touched afresh
  assert runs["on"][1] < 1_000  # the freed buffer's pages, reused
  assert runtime.configure_allocator({"VIBE_JAX_MALLOC": "0"}) is False


def test_compilation_cache_dir_flag_environment_default_and_off(tmp_path):
  assert runtime.compilation_cache_dir(str(tmp_path), {}) == tmp_path
  assert runtime.compilation_cache_dir(None, {"VIBE_JAX_COMPILATION_CACHE": "/c"}) == (
      pathlib.Path("/c"))
  assert runtime.compilation_cache_dir(None, {"XDG_CACHE_HOME": "/x"}) == (
      pathlib.Path("/x/vibe_jax/jax"))
  for off in ("off", "", "none"):
    assert runtime.compilation_cache_dir(off, {"VIBE_JAX_COMPILATION_CACHE": "/c"}) is None


def test_an_unusable_cache_folder_costs_only_the_cache(tmp_path, caplog):
  blocker = tmp_path / "file"
  blocker.write_text("")
  assert runtime.enable_compilation_cache(str(blocker / "cache")) is None
  assert "compilation cache off" in caplog.text


def test_the_e_step_leaves_ott_extras_unloaded_until_touched():
  script = ("import sys, vibe_jax.estep, importlib.util\n"
            "lazy = [m for m in ('scipy.stats', 'matplotlib.pyplot', 'ott.tools')\n"
            "        if type(sys.modules.get(m)).__name__ == '_LazyModule'"
            " or m not in sys.modules]\n"
            "import ott.tools, scipy.stats\n"
            "print(len(lazy), callable(scipy.stats.norm.cdf), ott.tools.soft_sort.__name__)\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=True).stdout.split()
  assert out == ["3", "True", "ott.tools.soft_sort"]
