"""Host memory of the two image placements as the dataset grows.

Builds an ImageNet-layout image folder (ROOT/train/<wnid>/*.JPEG, ROOT/val/...)
at 1x and 10x the images, and runs the imagenet1k experiment (runlocal: the
small CNN, 4 EM steps, every stage: SSL, Leiden, EM with two E-steps over the
whole training set, evaluation; evaluation passes of `eval_batch_size` 256 images) on each with `data.placement` "stream" and
"device", each run in its own process. Prints the peak resident memory of each
run: streamed, it should stay flat (the images are read batch by batch); device-
resident, it grows with the pixels (N x 224 x 224 x 3 bytes, plus copies).

  python benchmarks/streaming_memory.py --classes=40 --per_class=10 --scales=1,10

Prints one JSON line per run, then a Markdown table.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image


def make_folder(root: pathlib.Path, classes: int, per_class: int, side: int = 96) -> None:
  """ImageNet's layout with random JPEGs (resized to 224 when read)."""
  rng = np.random.default_rng(0)
  for split, n in (("train", per_class), ("val", 2)):
    for c in range(classes):
      wnid = f"n{1440764 + 17 * c:08d}"
      (root / split / wnid).mkdir(parents=True, exist_ok=True)
      for i in range(n):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)


def child(root: str, placement: str, workdir: str) -> dict:
  """One run of the imagenet1k experiment; returns its figures and peak RSS."""
  from configs import imagenet1k  # pylint: disable=g-import-not-at-top
  from vibe_jax.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top

  config = imagenet1k.get_config("attack=badnets,variant=ss_f,runlocal=1")
  config.data.dataset, config.data.placement = root, placement
  config.data.train_subset = config.data.test_subset = 0
  config.num_steps, config.estep.period = 4, 2  # E-steps before steps 0 and 2
  began = time.time()
  results = train_and_evaluate(config, workdir)
  return {"placement": placement, "train_images": results["stages"]["data"]["train"],
          "seconds": round(time.time() - began, 1),
          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--classes", type=int, default=40)
  parser.add_argument("--per_class", type=int, default=10)
  parser.add_argument("--scales", default="1,10")
  parser.add_argument("--placements", default="stream,device")
  parser.add_argument("--child", nargs=3, metavar=("ROOT", "PLACEMENT", "WORKDIR"))
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(*args.child)))
    return
  rows = []
  repo = pathlib.Path(__file__).resolve().parents[1]
  with tempfile.TemporaryDirectory() as tmp:
    for scale in map(int, args.scales.split(",")):
      root = pathlib.Path(tmp) / f"x{scale}"
      make_folder(root, args.classes, args.per_class * scale)
      for placement in args.placements.split(","):
        workdir = pathlib.Path(tmp) / f"run-x{scale}-{placement}"
        out = subprocess.run([sys.executable, __file__, "--child", str(root), placement,
                              str(workdir)], capture_output=True, text=True, check=True,
                             cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)))
        row = {"scale": scale, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        rows.append(row)
  print("\n| scale | training images | placement | peak RSS (MiB) | wall (s) |")
  print("|---:|---:|---|---:|---:|")
  for r in rows:
    print(f"| {r['scale']}x | {r['train_images']} | {r['placement']} | "
          f"{r['peak_rss_mib']} | {r['seconds']} |")


if __name__ == "__main__":
  main()
