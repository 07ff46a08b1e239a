"""E-step benchmark: ott-jax's Sinkhorn, our blocked Sinkhorn, and the reference.

The reference (spec 4.4) is written here independently in PyTorch: log-domain
Sinkhorn-Knopp at lambda = 25, class scaling then sample scaling, exactly 10,001
iterations, labels = argmax(lambda log P + a). Ours, `estep.pseudo_labels` with
solver "ott" (method `ours`) or "blocked" (`blocked`), runs to the threshold
(default 1e-3 L1 error of the class marginal); the `*_reference_mode` methods run
10,001 iterations. Each (case, method) runs in its own subprocess so that its
peak RSS is its own; `--devices=8` runs the JAX methods on 8 host devices
(XLA_FLAGS set in the child), log P sharded by rows.

  pip install -e ".[bench]"   # PyTorch, for the reference
  python benchmarks/estep.py --cases=50000x10,50000x100
  python benchmarks/estep.py --cases=200000x1000,1281167x1000 --methods=ours,blocked
  python benchmarks/estep.py --cases=1281167x1000 --methods=blocked --devices=8

Printed per case and method: ms per iteration (the marginal cost, from runs of
10 and 40 iterations, best of 3), bytes each iteration moves and exps it takes
per entry (`TRAFFIC`), the floors those imply on this machine (copy and read
bandwidth and exp throughput, best of 3 probes taken between the timed runs, so
that a shared machine is measured as the solver saw it) and the ratio to the
larger floor, the fixed overhead of a call (the 10-iteration run minus 10 x ms
per iteration, and its share of a call of the measured iterations), compile
time, peak RSS during the solve against the N x K float32 matrix, XLA's bytes
per device (memory analysis), and label agreement with ott (`ours`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

LAMBDA = 25.0
REFERENCE_ITERATIONS = 10_001
MARGINAL_ITERATIONS = (10, 40)  # two fixed-length runs give the cost of one iteration

# method -> (estep solver, reference mode); "reference" is the PyTorch reference.
METHODS = {"ours": ("ott", False), "ours_reference_mode": ("ott", True),
           "blocked": ("blocked", False), "blocked_reference_mode": ("blocked", True)}

# Per entry of log P and per iteration: (bytes moved through memory, exps).
# ott (its compiled HLO): each half-iteration reads C, writes (f + g - C) / eps
# to an N x K temporary and reads it twice (max, then sum of exp): 2 x 16 bytes.
# blocked: one read of log P; the exp'd block is written and read in cache.
# reference: torch.logsumexp of a materialised A + b, taken as ott's (at least).
TRAFFIC = {"ott": (32, 2), "blocked": (4, 1), "reference": (32, 2)}

_CHUNK_ROWS = 65_536  # rows generated at a time by make_problem


def _aligned_empty(shape, dtype=np.float32) -> np.ndarray:
  # 64-byte aligned host memory: jax.device_put on the CPU then aliases it
  # instead of copying, so the matrix exists once.
  nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + 64, np.uint8)
  offset = -raw.ctypes.data % 64
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def make_problem(n: int, k: int, seed: int = 0, rows: tuple[int, int] | None = None):
  """A realistic log P: a vMF classifier (kappa 10) on noisy clustered features.

  Built in float32, `_CHUNK_ROWS` rows at a time into one aligned array, so that
  host memory peaks at the matrix plus one chunk's temporaries. Row chunk c
  draws from its own generator, so `rows=(start, stop)` gives exactly those
  rows of the whole problem (for building shards).

  Returns:
    (log_p (stop - start, k) float32, prior (k,) float32).
  """
  rng = np.random.default_rng(seed)
  d = 64
  protos = rng.standard_normal((k, d), dtype=np.float32)
  protos /= np.linalg.norm(protos, axis=1, keepdims=True)
  rho = rng.standard_normal(k, dtype=np.float32)
  prior = np.exp(0.02 * rho) / np.exp(0.02 * rho).sum()
  start, stop = (0, n) if rows is None else rows
  log_p = _aligned_empty((stop - start, k))
  for c in range(start // _CHUNK_ROWS, -(-stop // _CHUNK_ROWS)):
    lo, hi = c * _CHUNK_ROWS, min((c + 1) * _CHUNK_ROWS, n)
    chunk_rng = np.random.default_rng([seed, c])
    true = chunk_rng.integers(0, k, hi - lo)
    noise = chunk_rng.standard_normal((hi - lo, d), dtype=np.float32)
    feats = protos[true] + noise * np.float32(0.9 * 4 / np.sqrt(d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    logits = np.float32(10.0) * (feats @ protos.T)
    top = logits.max(axis=1, keepdims=True)
    logits -= top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    a, b = max(lo, start), min(hi, stop)
    log_p[a - start:b - start] = logits[a - lo:b - lo]
  return log_p, prior.astype(np.float32)


def _rss_mib(field: str = "VmRSS") -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  raise KeyError(field)


def _reset_peak_rss() -> None:
  # Linux: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS, so
  # the peak of the timed solve is not that of building the problem.
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def machine_probe():
  """A function that measures the machine once: copy and read bandwidth (GB/s)
  and exp throughput (ns per float32 exp); its arrays are allocated once."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  src = np.ones(2**27, np.float32)  # 512 MiB
  dst = np.empty_like(src)
  x = jax.device_put(src)
  total = jax.jit(jnp.sum)
  y = jax.random.normal(jax.random.key(0), (2**26,), jnp.float32)  # 256 MiB
  # Summed so that nothing is written back: this counts the exps (and a read).
  sum_exp = jax.jit(lambda v: jnp.sum(jnp.exp(v)))
  np.copyto(dst, src)
  jax.block_until_ready((total(x), sum_exp(y)))

  def timed(fn):
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began

  def probe() -> dict:
    copy_s = timed(lambda: np.copyto(dst, src))
    read_s = timed(lambda: total(x).block_until_ready())
    exp_s = timed(lambda: sum_exp(y).block_until_ready())
    return {"copy_gb_s": 2 * src.nbytes / copy_s / 1e9,  # read + write
            "read_gb_s": src.nbytes / read_s / 1e9, "ns_per_exp": exp_s / y.size * 1e9}

  return probe


def best_of(probes: list[dict]) -> dict:
  """The machine at its best over several probes (rounded)."""
  return {"copy_gb_s": round(max(p["copy_gb_s"] for p in probes), 2),
          "read_gb_s": round(max(p["read_gb_s"] for p in probes), 2),
          "ns_per_exp": round(min(p["ns_per_exp"] for p in probes), 4)}


def run_reference(log_p: np.ndarray, prior: np.ndarray, iterations: int) -> dict:
  """Spec 4.4 in PyTorch, float32."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  with torch.inference_mode():
    a_mat = torch.from_numpy(log_p) * LAMBDA
    n, _ = a_mat.shape
    log_r = torch.from_numpy(prior).log()
    log_s = torch.full((n,), 1.0 / n).log()
    b = log_s.clone()
    _reset_peak_rss()
    rss_before = _rss_mib()
    began = time.perf_counter()
    for _ in range(iterations):
      a = log_r - torch.logsumexp(a_mat + b[:, None], dim=0)
      b = log_s - torch.logsumexp(a_mat + a[None, :], dim=1)
    labels = torch.argmax(a_mat + a[None, :], dim=1).numpy()
    seconds = time.perf_counter() - began
  return {"labels": labels, "total_s": seconds, "iterations": iterations,
          "ms_per_iteration": 1000 * seconds / iterations, "rss_before_mib": rss_before,
          "peak_rss_mib": _rss_mib("VmHWM")}


def _solver_fn(solver, reference, threshold, num_rows, max_iterations=REFERENCE_ITERATIONS):
  import jax  # pylint: disable=g-import-not-at-top
  from vibe_jax import estep  # pylint: disable=g-import-not-at-top

  return jax.jit(lambda lp, pr: estep.pseudo_labels(
      lp, pr, epsilon=1.0 / LAMBDA, threshold=threshold, max_iterations=max_iterations,
      reference_iterations=reference, num_rows=num_rows, solver=solver))


def run_jax(lp, pr, method: str, threshold: float, num_rows: int,
            repeats: int = 3) -> dict:
  """`estep.pseudo_labels` jitted: compile, one timed solve, marginal iteration cost."""
  import jax  # pylint: disable=g-import-not-at-top

  solver, reference = METHODS[method]
  began = time.perf_counter()
  compiled = _solver_fn(solver, reference, threshold, num_rows).lower(lp, pr).compile()
  compile_s = time.perf_counter() - began
  memory = compiled.memory_analysis()
  _reset_peak_rss()
  rss_before = _rss_mib()
  began = time.perf_counter()
  out = jax.block_until_ready(compiled(lp, pr))
  seconds = time.perf_counter() - began
  peak = _rss_mib("VmHWM")
  row = {"labels": np.asarray(out.labels)[:num_rows], "total_s": seconds,
         "iterations": int(out.iterations), "converged": bool(out.converged),
         "error": float(out.error), "compile_s": compile_s, "rss_before_mib": rss_before,
         "peak_rss_mib": peak,
         "device_argument_mib": memory.argument_size_in_bytes / 2**20,
         "device_temp_mib": memory.temp_size_in_bytes / 2**20,
         "device_output_mib": memory.output_size_in_bytes / 2**20}
  if reference:
    row["ms_per_iteration"] = 1000 * seconds / row["iterations"]
    return row
  # Never converging (threshold 1e-30), these run exactly 10 and 40 iterations;
  # what both pay once (first-touch page faults included) cancels in the
  # difference. Best of `repeats`: the machine may be shared.
  fns = [_solver_fn(solver, False, 1e-30, num_rows, iterations).lower(lp, pr).compile()
         for iterations in MARGINAL_ITERATIONS]
  # The floors are probed between the timed runs, so that both see the same
  # machine (it may be shared); the best of each is kept.
  probe, probes = machine_probe(), []
  best = [float("inf")] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      began = time.perf_counter()
      jax.block_until_ready(fn(lp, pr))
      best[i] = min(best[i], time.perf_counter() - began)
    probes.append(probe())
  row["machine"] = best_of(probes)
  per_iteration = (best[1] - best[0]) / np.diff(MARGINAL_ITERATIONS)[0]
  row["ms_per_iteration"] = 1000 * per_iteration
  row["marginal_runs_s"] = [round(t, 3) for t in best]
  # The intercept: what a call costs besides its iterations (first passes,
  # labels, dispatch), from the same best-of runs as the slope.
  row["fixed_s"] = best[0] - MARGINAL_ITERATIONS[0] * per_iteration
  return row


def _sharded_problem(n: int, k: int, devices: int):
  """log P built shard by shard on `devices` host devices, padded to divide them."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from vibe_jax import parallel  # pylint: disable=g-import-not-at-top

  padded = -(-n // devices) * devices
  sharding = NamedSharding(parallel.data_mesh(), PartitionSpec(parallel.DATA_AXIS, None))

  def shard(index):
    start, stop = index[0].indices(padded)[:2]
    out = _aligned_empty((stop - start, k))
    out[:] = 0.0  # zero-mass padding rows
    if start < n:
      out[:min(stop, n) - start] = make_problem(n, k, rows=(start, min(stop, n)))[0]
    return out

  log_p = jax.make_array_from_callback((padded, k), sharding, shard)
  return log_p, jax.device_put(make_problem(1, k)[1])


def child(case: str, method: str, threshold: float, out_dir: str, devices: int) -> dict:
  """Runs one method on one case; saves its labels; returns its figures."""
  n, k = map(int, case.split("x"))
  row = {"case": case, "method": method if devices == 1 else f"{method}@{devices}dev"}
  if method == "reference":
    log_p, prior = make_problem(n, k)
    result = run_reference(log_p, prior, REFERENCE_ITERATIONS)
  else:
    import jax  # pylint: disable=g-import-not-at-top

    if devices > 1:
      assert jax.device_count() == devices, jax.devices()
      lp, pr = _sharded_problem(n, k, devices)
    else:
      log_p, prior = make_problem(n, k)
      lp, pr = jax.device_put(log_p), jax.device_put(prior)  # aliases log_p
    result = run_jax(lp, pr, method, threshold, n)
  np.save(os.path.join(out_dir, f"{case}_{row['method']}.npy"), result.pop("labels"))
  row.update({key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()})
  row["matrix_mib"] = round(n * k * 4 / 2**20, 1)
  row["peak_rss_growth_mib"] = round(row["peak_rss_mib"] - row.pop("rss_before_mib"), 1)
  return row


def derive(row: dict, machine: dict) -> dict:
  """Adds the floors, the ratio to the larger one and the fixed overhead."""
  machine = row.get("machine", machine)  # probed between its timed runs
  n, k = map(int, row["case"].split("x"))
  solver = METHODS.get(row["method"].split("@")[0], ("reference",))[0]
  bytes_per_entry, exps = TRAFFIC[solver]
  entries = n * k
  per_it = row["ms_per_iteration"]
  row["bytes_per_iteration_gb"] = round(bytes_per_entry * entries / 1e9, 3)
  row["bandwidth_floor_ms"] = round(bytes_per_entry * entries / (machine["read_gb_s"] * 1e6), 2)
  row["exp_floor_ms"] = round(exps * entries * machine["ns_per_exp"] / 1e6, 2)
  row["two_exp_floor_ms"] = round(2 * entries * machine["ns_per_exp"] / 1e6, 2)
  row["ratio_to_floor"] = round(per_it / max(row["bandwidth_floor_ms"], row["exp_floor_ms"]), 2)
  row["ratio_to_two_exp_floor"] = round(per_it / max(row["bandwidth_floor_ms"],
                                                     row["two_exp_floor_ms"]), 2)
  # A call = fixed + iterations x per iteration; without marginal runs (reference
  # mode) the fixed part is what the timed call spent beyond its iterations.
  fixed = row.get("fixed_s", row["total_s"] - row["iterations"] * per_it / 1000)
  row["fixed_s"] = round(fixed, 3)
  row["fixed_percent"] = round(100 * fixed / (fixed + row["iterations"] * per_it / 1000), 1)
  row["peak_rss_over_matrix"] = round(row["peak_rss_mib"] / row["matrix_mib"], 2)
  row["rss_growth_over_matrix"] = round(row["peak_rss_growth_mib"] / row["matrix_mib"], 2)
  return row


def _run_child(args, *extra, devices=1):
  env = dict(os.environ)
  if devices > 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
  out = subprocess.run([sys.executable, __file__, *extra, "--threshold", str(args.threshold),
                        "--out_dir", args.out_dir, "--devices", str(devices)],
                       capture_output=True, text=True, env=env, check=False)
  if out.returncode:
    raise RuntimeError(f"child {extra} failed:\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _agreement(out_dir: str, case: str, method: str, other: str):
  mine, theirs = (os.path.join(out_dir, f"{case}_{m}.npy") for m in (method, other))
  if method == other or not os.path.exists(theirs):
    return None
  return float(np.mean(np.load(mine) == np.load(theirs)))


def print_table(rows: list[dict]) -> None:
  """The figures as a Markdown table."""
  print("| N x K | method | iterations | ms / iteration | GB / iteration | floor ms "
        "(bandwidth / exp / 2-exp) | x floor (x 2-exp floor) | fixed s (% of call) | "
        "compile s | total s | peak RSS / matrix (growth) | device temp MiB | "
        "agreement with ott |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    agree = r.get("agreement_with_ours")
    agree = "-" if agree is None else f"{100 * agree:.4f}%"
    print(f"| {r['case']} | {r['method']} | {r['iterations']} | {r['ms_per_iteration']:.1f} | "
          f"{r['bytes_per_iteration_gb']} | {r['bandwidth_floor_ms']} / {r['exp_floor_ms']} / "
          f"{r['two_exp_floor_ms']} | {r['ratio_to_floor']} ({r['ratio_to_two_exp_floor']}) | "
          f"{r['fixed_s']} ({r['fixed_percent']}%) | {r.get('compile_s', '-')} | "
          f"{r['total_s']} | {r['peak_rss_over_matrix']} ({r['rss_growth_over_matrix']}) | "
          f"{r.get('device_temp_mib', '-')} | {agree} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default="50000x10,50000x100")
  parser.add_argument("--methods", default="reference,ours,ours_reference_mode")
  parser.add_argument("--threshold", type=float, default=1e-3)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--out_dir", default="/tmp/vibe_estep_bench")
  parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"))
  parser.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  if args.machine:
    probe = machine_probe()
    print(json.dumps(best_of([probe() for _ in range(3)])))
    return
  if args.child:
    print(json.dumps(child(*args.child, args.threshold, args.out_dir, args.devices)))
    return
  began = time.perf_counter()
  machine = _run_child(args, "--machine")
  print(json.dumps({"machine": machine}), flush=True)
  rows = []
  for case in args.cases.split(","):
    for method in args.methods.split(","):
      devices = 1 if method == "reference" else args.devices
      row = derive(_run_child(args, "--child", case, method, devices=devices), machine)
      for other in ("ours", "reference", method):
        agree = _agreement(args.out_dir, case, row["method"], other)
        if agree is not None:
          row[f"agreement_with_{other}"] = agree
      print(json.dumps(row), flush=True)
      rows.append(row)
  print(f"\nmachine: {machine}; threshold {args.threshold}; devices {args.devices}; "
        f"wall {time.perf_counter() - began:.0f} s\n")
  print_table(rows)


if __name__ == "__main__":
  main()
