"""Input-pipeline benchmark: images/s of the training pipeline with each attack.

For each dataset (32px CIFAR-10 and 224px Imagenette image folders by default) and
each attack, two figures:
  attack: `attack.apply` alone on a batch of 256 decoded images (every image
    triggered), images/s on one core;
  pipeline: the whole training pipeline (JPEG decode, poisoning at the attack's
    default rate, augmentation, normalisation, batching of 256) through grain with
    one worker thread, images/s on one core.
Then how many such cores a GPU consuming 20,000 CIFAR images/s would need.

  python benchmarks/pipeline.py
  python benchmarks/pipeline.py --datasets=/path/cifar10-jpeg --attacks=badnets,wanet
"""

import argparse
import os
import pathlib
import time

import grain
import numpy as np

from vibe_jax import attacks
from vibe_jax.data import pipeline, sources
from vibe_jax.data.poisoned import poison_train_set

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def rate(fn, count: int, min_seconds: float = 2.0) -> float:
  """Items per second of `fn()`, which processes `count` items, over >= min_seconds."""
  fn()  # warm up (caches, cached properties)
  done, began = 0, time.perf_counter()
  while time.perf_counter() - began < min_seconds:
    fn()
    done += count
  return done / (time.perf_counter() - began)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default=f"{SHARED / 'cifar10-jpeg'},"
                                            f"{SHARED / 'imagenette-jpeg'}")
  parser.add_argument("--attacks", default=",".join(attacks.names()))
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--seconds", type=float, default=3.0)
  args = parser.parse_args()
  rows = []
  for dataset in args.datasets.split(","):
    info = sources.dataset_info(dataset)
    source = sources.open_source(dataset, "train")
    batch = source.images(np.arange(args.batch_size) % len(source))
    for name in args.attacks.split(","):
      attack = attacks.build(name, image_size=info.image_size,
                             num_classes=source.num_classes)
      alone = rate(lambda: attack.apply(batch, np.arange(len(batch))), len(batch),
                   args.seconds)
      train = poison_train_set(source, attack)
      data = pipeline.train_pipeline(train, info, batch_size=args.batch_size, seed=0)
      iterator = iter(data.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                              prefetch_buffer_size=1)))
      full = rate(lambda: next(iterator), args.batch_size, args.seconds)
      row = (os.path.basename(dataset.rstrip("/")), info.image_size, name, alone, full)
      rows.append(row)
      print(f"{row[0]} {row[1]}px {name}: attack {alone:,.0f} img/s, "
            f"pipeline {full:,.0f} img/s (one core)", flush=True)
  print(f"\n{os.cpu_count()} cores; one grain worker thread per measurement\n")
  print("| dataset | px | attack | attack alone img/s/core | pipeline img/s/core | "
        "cores to feed 20,000 CIFAR img/s |")
  print("|---|---:|---|---:|---:|---:|")
  for data_name, px, name, alone, full in rows:
    cores = f"{20000 / full:,.1f}" if px <= 64 else "-"
    print(f"| {data_name} | {px} | {name} | {alone:,.0f} | {full:,.0f} | {cores} |")


if __name__ == "__main__":
  main()
