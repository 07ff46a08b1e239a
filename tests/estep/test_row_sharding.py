"""Row-sharded E-steps on 8 simulated devices: the same labels as on one device,
labels sharded by rows, and no device holding more than its rows of log P."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import ROOT
from vibe_jax.estep import row_sharding

_SCRIPT = """
import functools, json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from vibe_jax import estep, parallel
assert jax.device_count() == 8
rng = np.random.default_rng(0)
n, k, d = 8003, 100, 16  # not divisible by 8: padded with 5 zero-mass rows
centres = rng.normal(size=(k, d)).astype(np.float32)
w = jnp.asarray(centres.T)
x = (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * 1.5).astype(np.float32)
y = rng.integers(0, k, n).astype(np.int32)
log_joint = lambda xb, yb: jax.nn.log_softmax(xb @ w, axis=1) + 0.5 * jax.nn.one_hot(yb, k)
log_p = np.asarray(log_joint(jnp.asarray(x), jnp.asarray(y)))
prior = jnp.full((k,), 1.0 / k)
mesh = parallel.data_mesh()
pad = lambda a: np.concatenate([a, np.zeros((5,) + a.shape[1:], a.dtype)])
rows = jax.device_put(pad(log_p), NamedSharding(mesh, P("data", None)))
run = jax.jit(functools.partial(estep.pseudo_labels, epsilon=0.2),  # 150 iterations
              static_argnames=("num_rows", "solver", "block_rows"))
out = {}
for solver in estep.SOLVERS:
  one = run(jnp.asarray(log_p), prior, solver=solver, block_rows=128)
  compiled = run.lower(rows, prior, num_rows=n, solver=solver, block_rows=128).compile()
  eight = compiled(rows, prior)
  memory = compiled.memory_analysis()
  out[solver] = {
      "agree": float(np.mean(np.asarray(one.labels) == np.asarray(eight.labels)[:n])),
      "dg": float(jnp.max(jnp.abs(one.g - eight.g))),
      "iterations": [int(one.iterations), int(eight.iterations)],
      "spec": str(eight.labels.sharding.spec), "f_spec": str(eight.f.sharding.spec),
      "argument_bytes": memory.argument_size_in_bytes,
      "temp_bytes": memory.temp_size_in_bytes}
  if solver == "blocked":
    blocked_one = one
split = NamedSharding(mesh, P("data"))
stream = jax.jit(lambda a, b: estep.pseudo_labels_from_features(
    log_joint, a, b, prior, epsilon=0.2, num_rows=n, block_rows=128))(
        jax.device_put(pad(x), split), jax.device_put(pad(y), split))
out["streaming"] = {
    "agree": float(np.mean(np.asarray(blocked_one.labels) == np.asarray(stream.labels)[:n])),
    "dg": float(jnp.max(jnp.abs(blocked_one.g - stream.g))),
    "iterations": [int(blocked_one.iterations), int(stream.iterations)],
    "spec": str(stream.labels.sharding.spec)}
print(json.dumps(out))
"""

_ROWS_SPEC = ("P('data',)", "PartitionSpec('data',)")
_LOCAL_LOG_P_BYTES = 8008 // 8 * 100 * 4


@pytest.fixture(scope="module")
def eight_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                       env=env, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("solver", ["ott", "blocked", "streaming"])
def test_eight_devices_give_the_labels_of_one(eight_devices, solver):
  got = eight_devices[solver]
  assert got["agree"] >= 0.9999
  assert got["iterations"][0] == got["iterations"][1]
  assert got["dg"] < 1e-4  # zero-mass padding changes nothing
  assert got["spec"] in _ROWS_SPEC


@pytest.mark.parametrize("solver", ["ott", "blocked"])
def test_each_device_holds_only_its_rows_of_log_p(eight_devices, solver):
  got = eight_devices[solver]
  assert got["f_spec"] in _ROWS_SPEC
  # Arguments: its 8008 / 8 rows of log P plus the prior.
  assert got["argument_bytes"] == _LOCAL_LOG_P_BYTES + 100 * 4


def test_blocked_temporaries_are_blocks_not_the_matrix(eight_devices):
  # ott's temporaries are (N / 8) x K matrices; the blocked solver's, blocks of
  # 128 rows and vectors of the device's rows: no copy of its log P.
  assert eight_devices["blocked"]["temp_bytes"] < _LOCAL_LOG_P_BYTES / 2
  assert eight_devices["ott"]["temp_bytes"] > _LOCAL_LOG_P_BYTES


def test_one_device_arrays_run_one_loop():
  assert row_sharding.row_mesh(np.zeros((8, 3))) is None
  assert row_sharding.row_mesh(jnp.zeros((8, 3))) is None
  jax.jit(lambda x: (row_sharding.row_mesh(x) is None) or 1 / 0)(jnp.zeros((8, 3)))
