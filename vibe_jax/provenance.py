"""Where a result came from: commit, device, versions."""

import os
import pathlib
import platform
import subprocess

import jax

__all__ = ["provenance"]


def _commit() -> str:
  here = pathlib.Path(__file__).resolve().parent
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                         capture_output=True, text=True, timeout=10, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=here, capture_output=True, text=True, timeout=10)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _cpu() -> str:
  # The host CPU matters for CPU timings (and for the host side of accelerator runs).
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
  except OSError:
    pass
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def provenance() -> dict[str, str]:
  """Returns the commit, the device kind and count, the host CPU and the jax version."""
  devices = jax.devices()
  return {
      "commit": _commit(),
      "device": f"{len(devices)} x {devices[0].device_kind}",
      "platform": devices[0].platform,
      "cpu": _cpu(),
      "jax": jax.__version__,
  }
