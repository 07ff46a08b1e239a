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
