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


def _cpu(cpuinfo: str | None = None) -> str:
  """The host CPU: model name, family and model, widest vector ISA, core count
  (`cpuinfo`: the text of /proc/cpuinfo, read when None)."""
  # The host CPU matters for CPU timings (and for the host side of accelerator runs):
  # machines sold under one model name ("AMD EPYC") differ in generation and vector
  # width, which moved our step timings against PyTorch's by 1.3x between two of them.
  if cpuinfo is None:
    try:
      cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
      cpuinfo = ""
  fields = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if not key.strip():
      break  # the first processor's block is enough
    fields[key.strip()] = value.strip()
  if "model name" in fields:
    detail = []
    if "cpu family" in fields and "model" in fields:
      detail.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    detail += [name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                       ("avx", "AVX")) if flag in flags][:1]
    suffix = f" ({', '.join(detail)})" if detail else ""
    return f"{fields['model name']}{suffix}, {os.cpu_count()} cores"
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
