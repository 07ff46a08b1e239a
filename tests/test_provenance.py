"""Provenance names the host CPU closely enough to tell two machines apart."""

import os

from vibe_jax import provenance

_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16

processor\t: 1
model name\t: something else
"""


def test_cpu_names_generation_and_vector_width():
  assert provenance._cpu(_CPUINFO) == (
      f"AMD EPYC (family 25 model 17, AVX-512), {os.cpu_count()} cores")
  avx2 = _CPUINFO.replace(" avx512f avx512_bf16", "")
  assert "(family 25 model 17, AVX2)" in provenance._cpu(avx2)


def test_cpu_without_cpuinfo_fields_still_names_the_cores():
  assert provenance._cpu("").endswith(f"{os.cpu_count()} cores")
  assert provenance._cpu("model name\t: Some CPU\n") == f"Some CPU, {os.cpu_count()} cores"
