"""Multi-host runtime: one command on one CPU, one GPU host, SLURM or a TPU pod.

JAX runs one Python process per host (or per GPU); every process runs the same
program and the processes meet in a coordinator hosted by process 0.
`initialize()` must run before anything touches a device. Where its settings
come from, first match wins:

* Flags (`--coordinator_address=host:port --num_processes=N --process_id=i`),
  then the environment (`VIBE_JAX_COORDINATOR_ADDRESS`, `VIBE_JAX_NUM_PROCESSES`,
  `VIBE_JAX_PROCESS_ID`), merged field by field: a launch script can export the
  address and count once and pass `--process_id` per process. Each process sees
  all its local devices (narrow them with `CUDA_VISIBLE_DEVICES` or
  `JAX_LOCAL_DEVICE_IDS` to run one process per GPU by hand).
* SLURM, when the step has more than one task (`srun`; JAX reads `SLURM_NTASKS`,
  `SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_STEP_NODELIST`; the coordinator is the
  first node, its port derived from `SLURM_JOB_ID` unless `JAX_COORDINATOR_PORT`
  is set). One process per node with all its GPUs: `--ntasks-per-node=1`. One per
  GPU: `--ntasks-per-node=8`; each task then gets the GPU numbered
  `SLURM_LOCALID`, or the one GPU SLURM bound it to (`--gpus-per-task=1`).
* Open MPI (`mpirun -np N`, more than one rank): JAX reads `OMPI_*`.
* A Cloud TPU pod slice with more than one worker: run the same command on every
  worker (`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`); JAX
  finds the workers from the metadata server (or `TPU_WORKER_HOSTNAMES` on GKE).
* Nothing of the above: one process with all local devices (one CPU, or the
  8 GPUs of one host).

`--distributed=off` never connects (e.g. a single-task run inside a SLURM job
step); `--distributed=on` fails unless one of the above says how to connect.

JAX aborts the whole process (SIGABRT, or SIGSEGV for a busy port) instead of
raising when the coordinator cannot be reached or not every process turns up.
`initialize` therefore checks the port first (process 0: free to bind; others:
reachable within the timeout) and waits for the connection on a helper thread,
so that every such failure is one `InputError` line after `timeout_s` at most.

What the rest of the code needs once the processes are connected (rows, gathers,
barriers) is in `multihost.py`.
"""

import dataclasses
import errno
import os
import socket
import threading
import time
from typing import Optional

import jax
import numpy as np
# JAX's own cluster detection (SLURM, Open MPI, Cloud TPU). Private, but it is the
# code `jax.distributed.initialize()` runs; calling it here tells whether a
# cluster asks for more than one process before connecting, and gives the
# coordinator's address to check and to name in errors.
from jax._src import clusters as jax_clusters
from jax.experimental import multihost_utils

from vibe_jax.errors import InputError

__all__ = ["Topology", "initialize", "check_topology", "MODES", "ENV_ADDRESS",
           "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]

MODES = ("auto", "on", "off")
ENV_ADDRESS = "VIBE_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "VIBE_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "VIBE_JAX_PROCESS_ID"

# Seconds JAX keeps trying after our own deadline: our thread reports the
# timeout first, and the caller has this long to exit before JAX aborts.
_ABORT_GRACE_S = 120
# JAX's registration order: under `mpirun` inside a SLURM allocation, Open MPI wins.
_CLUSTERS = (("ompi", jax_clusters.OmpiCluster), ("slurm", jax_clusters.SlurmCluster),
             ("tpu", jax_clusters.GkeTpuCluster), ("tpu", jax_clusters.GceTpuCluster))


@dataclasses.dataclass(frozen=True)
class Topology:
  """The processes and devices of this run, as JAX sees them after `initialize`.

  Attributes:
    process_index: this process, 0 .. process_count - 1 (0 writes the files).
    process_count: processes in the run.
    local_device_count: devices this process drives.
    device_count: devices of all processes.
    platform: "cpu", "gpu" or "tpu".
    how: what set the run up: "single" (no distributed runtime), "flags",
      "env", "slurm", "ompi", "tpu", or "external" (someone else called
      `jax.distributed.initialize`).
    coordinator_address: "host:port" of the coordinator; None in "single".
  """

  process_index: int
  process_count: int
  local_device_count: int
  device_count: int
  platform: str
  how: str
  coordinator_address: Optional[str] = None


_topology: Optional[Topology] = None


def initialize(*, mode: str = "auto", coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None,
               timeout_s: float = 300) -> Topology:
  """Connects this process to the others (if the run has others) and says how.

  Call once, before anything touches a JAX device; a second call returns the
  first call's topology.

  Args:
    mode: "auto" (connect when flags, environment or a cluster say so), "on"
      (and fail when nothing does) or "off" (never connect).
    coordinator_address: "host:port" of process 0 (--coordinator_address).
    num_processes: processes in the run (--num_processes).
    process_id: this process, 0 .. num_processes - 1 (--process_id).
    timeout_s: seconds to wait for the coordinator and every other process
      (--distributed_timeout).

  Returns:
    The run's `Topology`.

  Raises:
    InputError: bad or partial settings, a coordinator that cannot be reached,
      processes that do not all turn up within `timeout_s`, or a process count
      that disagrees with what JAX finds. After a connection failure the
      process should exit (JAX gives up on its own `_ABORT_GRACE_S` later).
  """
  global _topology
  if _topology is not None:
    return _topology
  if jax.distributed.is_initialized():
    _topology = _current("external", None)
    return _topology
  if mode not in MODES:
    raise InputError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
      or timeout_s <= 0:
    raise InputError(f"--distributed_timeout must be a positive number of seconds, "
                     f"got {timeout_s!r}")
  flags = {"--coordinator_address": coordinator_address,
           "--num_processes": num_processes, "--process_id": process_id}
  if mode == "off":
    given = [name for name, value in flags.items() if value is not None]
    if given:
      raise InputError(f"--distributed=off contradicts {', '.join(given)}; drop one")
    _topology = _current("single", None)
    return _topology
  settings = _explicit_settings(coordinator_address, num_processes, process_id)
  if settings is not None:
    how, address, count, index = settings
    if count == 1:
      _topology = _current("single", None)
      return _topology
    _connect(address, count, index, None, timeout_s, how)
    topology = _current(how, address)
    _check_same_count(count)
    check_topology(topology, expected_processes=count)
  else:
    topology = _connect_cluster(mode, timeout_s)
  _topology = topology
  return topology


def _explicit_settings(address, count, index):
  """(how, address, count, index) from flags then environment; None if neither."""
  env = {name: os.environ.get(name) or None
         for name in (ENV_ADDRESS, ENV_NUM_PROCESSES, ENV_PROCESS_ID)}
  if address is None and count is None and index is None and not any(env.values()):
    return None
  how = "flags" if (address, count, index) != (None, None, None) else "env"
  address = _address(*_pick("--coordinator_address", address, ENV_ADDRESS, env))
  count = _integer(*_pick("--num_processes", count, ENV_NUM_PROCESSES, env))
  index = _integer(*_pick("--process_id", index, ENV_PROCESS_ID, env))
  if count is None:
    raise InputError("--num_processes (or $VIBE_JAX_NUM_PROCESSES) is missing: pass "
                     "all of --coordinator_address, --num_processes, --process_id")
  if count < 1:
    raise InputError(f"--num_processes must be at least 1, got {count}")
  if count > 1 and address is None:
    raise InputError("--coordinator_address (or $VIBE_JAX_COORDINATOR_ADDRESS) is "
                     f"missing: --num_processes={count} needs process 0's host:port")
  if index is None:
    if count > 1:
      raise InputError("--process_id (or $VIBE_JAX_PROCESS_ID) is missing: each "
                       f"of the {count} processes needs its own in 0 .. {count - 1}")
    index = 0
  if not 0 <= index < count:
    raise InputError(f"--process_id must be in 0 .. {count - 1} "
                     f"(--num_processes={count}), got {index}")
  return how, address, count, index


def _pick(flag, value, env_name, env):
  """(name, value) of a setting: the flag if given, else the environment variable."""
  if value is not None:
    return flag, value
  return f"${env_name}", env[env_name]


def _integer(name, value):
  """`value` as an int (flags give ints, the environment strings)."""
  if value is None or (isinstance(value, int) and not isinstance(value, bool)):
    return value
  try:
    return int(str(value).strip())
  except ValueError:
    raise InputError(f"{name} must be an integer, got {value!r}") from None


def _address(name, value):
  """`value` checked to be "host:port" (IPv6 hosts in brackets)."""
  if value is None:
    return None
  host, _, port = str(value).strip().rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise InputError(f"{name} must be host:port with a port in 1 .. 65535, got {value!r}")
  return f"{host}:{port}"


def _connect_cluster(mode, timeout_s):
  """Connects as a detected cluster says, or returns the single-process topology."""
  for how, cluster in _CLUSTERS:
    if cluster.is_env_present() and cluster.get_process_count() > 1:
      break
  else:
    if mode == "on":
      raise InputError(
          "--distributed=on but nothing says how to connect: pass --coordinator_address, "
          "--num_processes and --process_id (or $VIBE_JAX_COORDINATOR_ADDRESS, "
          "$VIBE_JAX_NUM_PROCESSES, $VIBE_JAX_PROCESS_ID), or launch with srun/mpirun "
          "(more than one task) or on every worker of a Cloud TPU pod slice")
    return _current("single", None)
  address = cluster.get_coordinator_address(
      timeout_secs=int(timeout_s),
      override_coordinator_port=os.environ.get("JAX_COORDINATOR_PORT"))
  count, index = cluster.get_process_count(), cluster.get_process_id()
  _connect(address, count, index, _local_device_ids(how, cluster), timeout_s, how)
  return _current(how, address)


def _local_device_ids(how, cluster):
  """Devices this process drives under SLURM or Open MPI; None: JAX's choice.

  JAX's default there is one device per task, numbered by the task's local rank:
  right for one task per GPU, wrong for one task per node (it would drive only
  GPU 0) or when the launcher already narrowed CUDA_VISIBLE_DEVICES to one GPU
  (the local rank would name a GPU the task cannot see). An empty list means
  "every visible device" to `jax.distributed.initialize`.
  """
  if how not in ("slurm", "ompi") or os.environ.get("JAX_LOCAL_DEVICE_IDS"):
    return None
  if how == "slurm":
    nodes = os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_NNODES")
    per_node_one = nodes is not None and cluster.get_process_count() <= int(nodes)
  else:
    per_node_one = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") == "1"
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if per_node_one or (visible is not None and len(visible.split(",")) == 1):
    return []
  return [cluster.get_local_process_id()]


def _connect(address, count, index, local_device_ids, timeout_s, how):
  """`jax.distributed.initialize`, with every failure one InputError in time."""
  # Gloo is the default from jax 0.5 on; without a CPU collectives
  # implementation a computation spanning the processes' CPUs cannot run.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  deadline = time.monotonic() + timeout_s
  host, port = address.rsplit(":", 1)
  host, port = host.strip("[]"), int(port)
  if index == 0:
    _check_port_free(port, address, how)
  else:
    _wait_for_port(host, port, deadline, address, timeout_s)
  left = max(deadline - time.monotonic(), 1.0)
  errors = []

  def run():
    try:
      jax.distributed.initialize(
          address, count, index, local_device_ids=local_device_ids,
          cluster_detection_method="deactivate",
          initialization_timeout=int(left) + _ABORT_GRACE_S)
    except Exception as e:  # handed over to the calling thread
      errors.append(e)

  # JAX blocks until all processes have registered and aborts the process on
  # its own timeout; a daemon thread lets us give up first with a clear message.
  thread = threading.Thread(target=run, name="jax-distributed-initialize", daemon=True)
  thread.start()
  thread.join(left)
  if thread.is_alive():
    raise InputError(
        f"not all {count} processes reached the coordinator at {address} within "
        f"{timeout_s:g} s (--distributed_timeout); did every process start, with the "
        "same --coordinator_address and --num_processes?")
  if errors:
    if isinstance(errors[0], ValueError):
      raise InputError(f"cannot join the coordinator at {address}: {errors[0]}") \
          from errors[0]
    raise errors[0]


def _check_port_free(port, address, how):
  """Raises InputError if process 0 cannot host the coordinator on `port`."""
  # JAX crashes (SIGSEGV) when the port is taken; check with the same bind it
  # does (all interfaces). SO_REUSEADDR still fails on a live listener but not
  # on a port a previous run left in TIME_WAIT.
  for family, any_host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((any_host, port))
      return
    except OSError as e:
      if family == socket.AF_INET6 and e.errno != errno.EADDRINUSE:  # no IPv6: try IPv4
        continue
      where = ("--coordinator_address" if how in ("flags", "env")
               else "$JAX_COORDINATOR_PORT")
      raise InputError(f"process 0 cannot host the coordinator at {address}: port "
                       f"{port} is in use on this host ({e.strerror}); pick another "
                       f"port ({where})") from None


def _wait_for_port(host, port, deadline, address, timeout_s):
  """Waits until the coordinator's port accepts connections; InputError at `deadline`."""
  while True:
    try:
      with socket.create_connection((host, port), timeout=max(
          min(deadline - time.monotonic(), 2.0), 0.1)):
        return
    except OSError:
      if time.monotonic() >= deadline:
        raise InputError(
            f"cannot reach the coordinator at {address} within {timeout_s:g} s "
            "(--distributed_timeout); is process 0 running and the port open?") from None
      time.sleep(min(0.25, max(deadline - time.monotonic(), 0)))


def _check_same_count(count):
  """Raises InputError in every process unless all were given the same count."""
  # JAX takes process 0's count; a process launched with another one fails
  # check_topology, and without this exchange the others would wait for it in
  # their first collective. Every process must take part before any raises.
  counts = np.asarray(multihost_utils.process_allgather(np.int32(count))).ravel()
  if (counts != count).any():
    raise InputError("the processes were started with different --num_processes: "
                     + ", ".join(f"process {i}: {n}" for i, n in enumerate(counts)))


def _current(how, address):
  """The topology JAX reports now (this starts the backend)."""
  return Topology(process_index=jax.process_index(), process_count=jax.process_count(),
                  local_device_count=jax.local_device_count(),
                  device_count=jax.device_count(), platform=jax.default_backend(),
                  how=how, coordinator_address=address)


def check_topology(topology: Topology, expected_processes: Optional[int] = None,
                   expected_devices: Optional[int] = None) -> None:
  """Raises InputError unless the run has the processes and devices asked for.

  Every process must drive the same number of devices (the batch is split
  evenly over them).

  Args:
    topology: what `initialize` found.
    expected_processes: the process count the run was launched with, if known.
    expected_devices: the total device count asked for, if any.
  """
  found = topology.process_count
  if expected_processes is not None and expected_processes != found:
    raise InputError(f"--num_processes={expected_processes} but JAX found {found} "
                     f"process{'es' if found != 1 else ''}")
  if topology.device_count != found * topology.local_device_count:
    raise InputError(
        "every process must have the same number of devices: found "
        f"{topology.device_count} in all over {found} processes with "
        f"{topology.local_device_count} local")
  if expected_devices is not None and expected_devices != topology.device_count:
    raise InputError(
        f"expected {expected_devices} devices but JAX found {topology.device_count} "
        f"({found} process{'es' if found != 1 else ''} x {topology.local_device_count} "
        f"{topology.platform})")
