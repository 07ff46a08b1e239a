"""Where a result came from: commit, device, versions."""

import pathlib
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


def provenance() -> dict[str, str]:
  """Returns the commit, the device kind and count, and the jax version."""
  devices = jax.devices()
  return {
      "commit": _commit(),
      "device": f"{len(devices)} x {devices[0].device_kind}",
      "platform": devices[0].platform,
      "jax": jax.__version__,
  }
