"""The multi-host runtime: settings, errors, and a real run of two processes.

The multi-process tests start fresh Python processes on this machine (JAX's
runtime can be initialised once per process, and only before the backend
starts): two processes of two CPU devices each meet in a coordinator on
127.0.0.1, like two hosts would.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax import parallel
from vibe_jax.errors import InputError
from vibe_jax.parallel import distributed

ROOT = pathlib.Path(__file__).resolve().parents[2]

_CLUSTER_PREFIXES = ("VIBE_JAX_", "SLURM_", "OMPI_", "TPU_WORKER", "JAX_COORDINATOR",
                     "JAX_LOCAL_DEVICE_IDS", "MEGASCALE_")


@pytest.fixture
def clean(monkeypatch):
  """No remembered topology and no launcher settings in the environment (the
  tests may themselves run under SLURM)."""
  monkeypatch.setattr(distributed, "_topology", None)
  for name in list(os.environ):
    if name.startswith(_CLUSTER_PREFIXES):
      monkeypatch.delenv(name)
  return monkeypatch


# --- one process -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_single_process(clean, mode):
  topology = parallel.initialize(mode=mode)
  assert topology.process_count == 1 and topology.process_index == 0
  assert topology.how == "single" and topology.coordinator_address is None
  assert topology.device_count == topology.local_device_count == jax.device_count()
  assert parallel.initialize(mode="on") is topology  # a second call: the same


_ADDRESS = dict(coordinator_address="h:1")


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="10.0.0.1:1234"), "--num_processes"),
    (dict(coordinator_address="10.0.0.1:1234", num_processes=2), "--process_id"),
    (dict(num_processes=2, process_id=1), "--coordinator_address"),
    (dict(process_id=0), "--num_processes"),
    (dict(_ADDRESS, num_processes=2, process_id=2), "--process_id must be in 0 .. 1"),
    (dict(_ADDRESS, num_processes=2, process_id=-1), "--process_id must"),
    (dict(_ADDRESS, num_processes=0, process_id=0), "--num_processes must"),
    (dict(coordinator_address="10.0.0.1", num_processes=2, process_id=1),
     "--coordinator_address must be host:port"),
    (dict(coordinator_address="h:99999", num_processes=2, process_id=1),
     "--coordinator_address must"),
    (dict(coordinator_address=":80", num_processes=2, process_id=1),
     "--coordinator_address must"),
    (dict(mode="maybe"), "--distributed must be one of auto, on, off"),
    (dict(mode="off", num_processes=2), "--distributed=off contradicts --num_processes"),
    (dict(mode="on"), "--distributed=on but nothing says how"),
    (dict(timeout_s=0), "--distributed_timeout must be a positive"),
])
def test_bad_settings_name_the_flag(clean, kwargs, message):
  with pytest.raises(InputError, match=message) as error:
    parallel.initialize(**kwargs)
  assert "\n" not in str(error.value)


def test_environment(clean):
  clean.setenv("VIBE_JAX_NUM_PROCESSES", "two")
  with pytest.raises(InputError, match=r"^\$VIBE_JAX_NUM_PROCESSES must be an integer"):
    parallel.initialize()
  clean.setenv("VIBE_JAX_NUM_PROCESSES", "2")
  clean.setenv("VIBE_JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  with pytest.raises(InputError, match=r"--process_id \(or \$VIBE_JAX_PROCESS_ID\)"):
    parallel.initialize()
  clean.setenv("VIBE_JAX_PROCESS_ID", "1")
  assert distributed._explicit_settings(None, None, None) == ("env", "10.0.0.1:1234", 2,
                                                              1)
  # Flags win, field by field.
  assert distributed._explicit_settings(None, None, 0) == ("flags", "10.0.0.1:1234", 2, 0)
  clean.setenv("VIBE_JAX_NUM_PROCESSES", "1")
  clean.delenv("VIBE_JAX_PROCESS_ID")
  assert parallel.initialize(mode="on").how == "single"


def test_slurm_single_task_is_single(clean):
  slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node[01-02]", SLURM_NTASKS="1",
               SLURM_PROCID="0", SLURM_LOCALID="0")
  for name, value in slurm.items():
    clean.setenv(name, value)
  assert parallel.initialize().how == "single"


def test_slurm_local_devices(clean):
  """One task per node drives every GPU; several per node, one GPU each."""
  slurm = distributed.jax_clusters.SlurmCluster
  for name, value in [("SLURM_NTASKS", "2"), ("SLURM_STEP_NUM_NODES", "2"),
                      ("SLURM_LOCALID", "0")]:
    clean.setenv(name, value)
  clean.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  assert distributed._local_device_ids("slurm", slurm) == []
  clean.setenv("SLURM_NTASKS", "16")
  clean.setenv("SLURM_LOCALID", "3")
  assert distributed._local_device_ids("slurm", slurm) == [3]
  clean.setenv("CUDA_VISIBLE_DEVICES", "3")  # SLURM bound the task to its GPU
  assert distributed._local_device_ids("slurm", slurm) == []
  clean.setenv("JAX_LOCAL_DEVICE_IDS", "0,1")  # read by JAX itself
  assert distributed._local_device_ids("slurm", slurm) is None


def test_coordinator_port_in_use(clean):
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with pytest.raises(InputError, match=f"port {port} is in use"):
      parallel.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                          process_id=0, timeout_s=3)


def test_check_topology():
  one = distributed.Topology(0, 1, 1, 1, "cpu", "single")
  parallel.check_topology(one, expected_processes=1, expected_devices=1)
  with pytest.raises(InputError, match="--num_processes=2 but JAX found 1 process$"):
    parallel.check_topology(one, expected_processes=2)
  with pytest.raises(InputError, match="expected 4 devices but JAX found 1"):
    parallel.check_topology(one, expected_devices=4)
  uneven = distributed.Topology(0, 2, 3, 8, "gpu", "flags", "h:1")
  with pytest.raises(InputError, match="every process must have the same number of "
                     "devices: found 8 in all over 2 processes with 3 local"):
    parallel.check_topology(uneven)


def test_helpers_in_one_process():
  mesh = parallel.data_mesh()
  rows = 2 * jax.device_count()
  assert parallel.is_writer()
  assert parallel.process_rows(rows) == slice(0, rows)
  local = {"x": np.arange(rows * 3.0).reshape(rows, 3), "y": np.arange(rows)}
  batch = parallel.global_batch(local, mesh)
  assert batch["x"].sharding.is_equivalent_to(parallel.batch_rows(mesh), 2)
  back = parallel.to_host(batch)
  np.testing.assert_array_equal(back["x"], local["x"])
  total = parallel.to_host(jnp.sum(batch["y"]))
  np.testing.assert_array_equal(total, rows * (rows - 1) // 2)
  parallel.sync("nothing to wait for")


# --- several processes --------------------------------------------------------------

# Run as `python -c _WORKER HOW PORT PROCESS_ID NUM_PROCESSES TIMEOUT`: HOW "flags"
# passes the settings as arguments, anything else leaves them to the environment.
# Prints "RESULT" and JSON (Gloo writes lines of its own to stdout too), or
# "InputError: ..." and exits 2, the way main reports bad input.
_WORKER = """
import json, sys
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from vibe_jax import parallel
from vibe_jax.errors import InputError
how, port, index, count, timeout = sys.argv[1:]
settings = dict(coordinator_address=f"127.0.0.1:{port}", num_processes=int(count),
                process_id=int(index)) if how == "flags" else {}
try:
  topology = parallel.initialize(timeout_s=float(timeout), **settings)
except InputError as e:
  print(f"InputError: {e}", flush=True)
  sys.exit(2)
assert parallel.initialize() is topology
mesh = parallel.data_mesh()
everything = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
rows = parallel.process_rows(8, mesh)
batch = parallel.global_batch({"x": everything[rows], "y": np.arange(8)[rows]}, mesh)
# A psum over the rows of every device of both processes, by hand and by XLA.
total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(jnp.sum(x), "data"), mesh=mesh,
                              in_specs=P("data"), out_specs=P()))(batch["x"])
mean = jax.jit(lambda b: jnp.mean(b["x"], axis=0))(batch)
gathered = parallel.to_host(batch)
parallel.sync("done")
print("RESULT", json.dumps(dict(
    topology=topology.__dict__, writer=parallel.is_writer(), rows=[rows.start, rows.stop],
    total=float(parallel.to_host(total)), mean=parallel.to_host(mean).tolist(),
    x=gathered["x"].tolist(), y=gathered["y"].tolist())))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(port, index, count, timeout_s, how="flags"):
  """One worker process; `how` other than "flags" sets the environment it names."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_PREFIXES)}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(ROOT))
  if how == "env":
    env.update(VIBE_JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               VIBE_JAX_NUM_PROCESSES=str(count), VIBE_JAX_PROCESS_ID=str(index))
  elif how == "slurm":  # what srun --ntasks=2 sets on one node
    env.update(SLURM_JOB_ID="1", SLURM_STEP_NODELIST="127.0.0.1",
               SLURM_STEP_NUM_NODES="1", SLURM_NTASKS=str(count),
               SLURM_PROCID=str(index), SLURM_LOCALID=str(index),
               JAX_COORDINATOR_PORT=str(port))
  return subprocess.Popen([sys.executable, "-c", _WORKER, how, str(port), str(index),
                           str(count), str(timeout_s)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, timeout_s):
  try:
    out, err = process.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    process.kill()
    out, err = process.communicate()
    pytest.fail(f"no answer within {timeout_s} s (hung?):\n{out}\n{err[-3000:]}")
  return process.returncode, out, err


@pytest.mark.parametrize("how", ["flags", "env", "slurm"])
def test_two_processes(how):
  port = _free_port()
  processes = [_start(port, i, 2, 60, how) for i in range(2)]
  results = [_finish(p, 120) for p in processes]
  everything = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  for index, (code, out, err) in enumerate(results):
    assert code == 0, f"process {index}:\n{out}\n{err[-3000:]}"
    got = json.loads(next(line for line in out.splitlines()
                          if line.startswith("RESULT "))[len("RESULT "):])
    assert got["topology"] == dict(process_index=index, process_count=2,
                                   local_device_count=2, device_count=4, platform="cpu",
                                   how=how, coordinator_address=f"127.0.0.1:{port}")
    assert got["writer"] == (index == 0)
    assert got["rows"] == [4 * index, 4 * index + 4]
    assert got["total"] == everything.sum()
    np.testing.assert_allclose(got["mean"], everything.mean(axis=0))
    np.testing.assert_array_equal(got["x"], everything)
    np.testing.assert_array_equal(got["y"], np.arange(8))


def _error(out):
  """The InputError line a worker printed."""
  return next(line for line in out.splitlines() if line.startswith("InputError: "))


def test_processes_disagree_on_count():
  port = _free_port()
  processes = [_start(port, 0, 2, 30), _start(port, 1, 3, 30)]
  for code, out, err in [_finish(p, 60) for p in processes]:
    assert code == 2, f"{out}\n{err[-3000:]}"
    assert _error(out) == ("InputError: the processes were started with different "
                           "--num_processes: process 0: 2, process 1: 3")


def test_unreachable_coordinator():
  port = _free_port()  # nobody listens there
  start = time.monotonic()
  code, out, err = _finish(_start(port, 1, 2, 3), 30)
  assert code == 2, f"{out}\n{err[-3000:]}"
  assert _error(out) == (f"InputError: cannot reach the coordinator at 127.0.0.1:{port} "
                         "within 3 s (--distributed_timeout); is process 0 running and "
                         "the port open?")
  assert time.monotonic() - start < 15


@pytest.mark.slow
def test_missing_process():
  """Process 0 hosts the coordinator, but process 1 never comes."""
  code, out, err = _finish(_start(_free_port(), 0, 2, 3), 60)
  assert code == 2, f"{out}\n{err[-3000:]}"
  assert _error(out).startswith("InputError: not all 2 processes reached the coordinator")
