"""Does Leiden outlier filtering (spec 9) catch the poisoned examples in frozen
features? For each workdir's `features.npz` (an FM run), cluster the training
features as VIBE's filter does (`vibe_jax.leiden`: kNN graph, Leiden with K + 1
clusters, outlier score of each centroid) and print, as one JSON line per workdir:
the clusters' sizes, poisoned counts and scores, the cluster the filter would drop
(score above `--delta`), and how many poisoned examples that removes.

  python experiments/leiden_on_features.py workdirs/fm_cpu/cifar10/*/fm_f/seed0

`--subset=N` clusters a stratified random N of the training rows (the share of
poisoned examples kept) instead of all: the filter's 50-resolution Leiden sweep on
all 50,000 CIFAR-10 rows took more than 20 minutes on a 2-core CPU.
"""

import argparse
import json
import pathlib
import time

import numpy as np

from vibe_jax import leiden
from vibe_jax.data.features import load_npz
from vibe_jax.provenance import provenance


def main() -> None:
  """Command line: see the module docstring."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--delta", type=float, default=0.275)
  parser.add_argument("--neighbors", type=int, default=50)
  parser.add_argument("--subset", type=int, default=0)
  args = parser.parse_args()
  origin = provenance()
  for workdir in args.workdirs:
    began = time.time()
    data = load_npz(pathlib.Path(workdir) / "features.npz")
    x, y, poisoned = data.train_features, data.train_labels, data.train_poisoned
    if args.subset and args.subset < len(y):
      rng = np.random.default_rng(0)
      rows = np.sort(np.concatenate([
          rng.choice(np.flatnonzero(group), round(args.subset * group.mean()), replace=False)
          for group in (poisoned, ~poisoned)]))
      x, y, poisoned = x[rows], y[rows], poisoned[rows]
    target = len(np.unique(y)) + 1
    clusters = leiden.leiden_partition(len(x), leiden.knn_graph_edges(x, args.neighbors),
                                       target, 0)
    count = int(clusters.max()) + 1
    centroids = np.stack([x[clusters == c].mean(axis=0) for c in range(count)])
    scores = leiden.outlier_scores(centroids)
    removed = int(scores.argmax()) if count > 1 and scores.max() > args.delta else None
    table = [{"cluster": c, "size": int((clusters == c).sum()),
              "poisoned": int((poisoned & (clusters == c)).sum()),
              "score": round(float(scores[c]), 4)} for c in range(count)]
    most = max(table, key=lambda r: r["poisoned"])
    print(json.dumps({"workdir": workdir, "rows": len(y), "clusters": count, "delta": args.delta,
                      "removed_cluster": removed,
                      "removed_poisoned": None if removed is None else table[removed]["poisoned"],
                      "poisoned": int(poisoned.sum()), "most_poisoned_cluster": most,
                      "max_score": round(float(scores.max()), 4), "table": table,
                      "seconds": round(time.time() - began, 1), "provenance": origin}),
          flush=True)


if __name__ == "__main__":
  main()
