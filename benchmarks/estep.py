"""E-step benchmark: our ott-jax Sinkhorn against the reference algorithm.

The reference (spec 4.4) is written here independently in PyTorch: log-domain
Sinkhorn-Knopp at lambda = 25, class scaling then sample scaling, exactly 10,001
iterations, labels = argmax(lambda log P + a). Ours runs (a) to the threshold
(default 1e-3 L1 error of the class marginal) and (b) in reference mode (10,001
iterations). Each (case, method) runs in its own subprocess so that its peak RSS
is its own.

  pip install -e ".[bench]"   # PyTorch, for the reference
  python benchmarks/estep.py --cases=50000x10,50000x100
  python benchmarks/estep.py --cases=1281167x1000 --methods=ours   # on a GPU

Prints one JSON line per (case, method), then a Markdown table. "peak RSS growth"
is how far the process's peak resident memory rose during the timed solve (inputs
and compilation already resident), against the size of one N x K float32 matrix.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

LAMBDA = 25.0
REFERENCE_ITERATIONS = 10_001


def make_problem(n: int, k: int, seed: int = 0):
  """A realistic log P: a vMF classifier (kappa 10) on noisy clustered features,
  10% of the labels flipped to class 0 through an input-agnostic p(y|l)."""
  rng = np.random.default_rng(seed)
  d = 64
  protos = rng.normal(size=(k, d)).astype(np.float32)
  protos /= np.linalg.norm(protos, axis=1, keepdims=True)
  true = rng.integers(0, k, n)
  feats = protos[true] + 0.9 * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d) * 4
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  logits = 10.0 * feats @ protos.T
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  rho = rng.normal(size=k).astype(np.float32)
  prior = np.exp(0.02 * rho) / np.exp(0.02 * rho).sum()
  return log_p.astype(np.float32), prior.astype(np.float32)


def run_reference(log_p: np.ndarray, prior: np.ndarray, iterations: int):
  """Spec 4.4 in PyTorch, float32."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  with torch.inference_mode():
    a_mat = torch.from_numpy(log_p).to(device) * LAMBDA
    n, _ = a_mat.shape
    log_r = torch.from_numpy(prior).to(device).log()
    log_s = torch.full((n,), 1.0 / n, device=device).log()
    b = log_s.clone()
    if device == "cuda":
      torch.cuda.synchronize()
    rss_before = _peak_rss_mib()
    began = time.perf_counter()
    for _ in range(iterations):
      a = log_r - torch.logsumexp(a_mat + b[:, None], dim=0)
      b = log_s - torch.logsumexp(a_mat + a[None, :], dim=1)
    labels = torch.argmax(a_mat + a[None, :], dim=1).cpu().numpy()
    seconds = time.perf_counter() - began
  return labels, seconds, iterations, rss_before


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(log_p: np.ndarray, prior: np.ndarray, reference: bool, threshold: float):
  """vibe_jax.estep.pseudo_labels, jitted; compile time excluded."""
  import jax  # pylint: disable=g-import-not-at-top
  from vibe_jax import estep  # pylint: disable=g-import-not-at-top

  fn = jax.jit(lambda lp, pr: estep.pseudo_labels(
      lp, pr, epsilon=1.0 / LAMBDA, threshold=threshold, reference_iterations=reference))
  lp, pr = jax.device_put(log_p), jax.device_put(prior)
  began = time.perf_counter()
  compiled = fn.lower(lp, pr).compile()
  compile_s = time.perf_counter() - began
  rss_before = _peak_rss_mib()
  began = time.perf_counter()
  out = jax.block_until_ready(compiled(lp, pr))
  seconds = time.perf_counter() - began
  return (np.asarray(out.labels), seconds, int(out.iterations), compile_s,
          bool(out.converged), rss_before)


def child(case: str, method: str, threshold: float, out_dir: str) -> dict:
  """Runs one method on one case; saves its labels; returns its figures."""
  n, k = map(int, case.split("x"))
  log_p, prior = make_problem(n, k)
  row = {"case": case, "method": method}
  if method == "reference":
    labels, seconds, iters, rss_before = run_reference(log_p, prior, REFERENCE_ITERATIONS)
  else:
    labels, seconds, iters, compile_s, converged, rss_before = run_ours(
        log_p, prior, method == "ours_reference_mode", threshold)
    row.update(compile_s=round(compile_s, 2), converged=converged)
  rss_after = _peak_rss_mib()
  np.save(os.path.join(out_dir, f"{case}_{method}.npy"), labels)
  row.update(iterations=iters, total_s=round(seconds, 3),
             ms_per_iteration=round(1000 * seconds / iters, 4),
             matrix_mib=round(n * k * 4 / 2**20, 1),
             peak_rss_growth_mib=round(rss_after - rss_before, 1))
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default="50000x10,50000x100")
  parser.add_argument("--methods", default="reference,ours,ours_reference_mode")
  parser.add_argument("--threshold", type=float, default=1e-3)
  parser.add_argument("--out_dir", default="/tmp/vibe_estep_bench")
  parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"))
  args = parser.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  if args.child:
    print(json.dumps(child(*args.child, args.threshold, args.out_dir)))
    return
  rows = []
  for case in args.cases.split(","):
    for method in args.methods.split(","):
      out = subprocess.run([sys.executable, __file__, "--child", case, method,
                            "--threshold", str(args.threshold), "--out_dir", args.out_dir],
                           capture_output=True, text=True, check=True)
      row = json.loads(out.stdout.strip().splitlines()[-1])
      ref = os.path.join(args.out_dir, f"{case}_reference.npy")
      if method != "reference" and os.path.exists(ref):
        mine = np.load(os.path.join(args.out_dir, f"{case}_{method}.npy"))
        row["agreement_with_reference"] = float(np.mean(mine == np.load(ref)))
      print(json.dumps(row), flush=True)
      rows.append(row)
  import jax  # pylint: disable=g-import-not-at-top
  print(f"\ndevice: {jax.devices()[0].device_kind}, threshold {args.threshold}\n")
  print("| N x K | method | iterations | ms / iteration | total s | agreement | peak RSS growth MiB |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for r in rows:
    agree = r.get("agreement_with_reference")
    agree = "-" if agree is None else f"{100 * agree:.3f}%"
    print(f"| {r['case']} | {r['method']} | {r['iterations']} | {r['ms_per_iteration']} | "
          f"{r['total_s']} | {agree} | {r['peak_rss_growth_mib']} |")


if __name__ == "__main__":
  main()
