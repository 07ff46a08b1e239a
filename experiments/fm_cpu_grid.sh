#!/usr/bin/env bash
# The README's frozen-feature tables on a CPU (configs/fm_cpu.py), in the order that
# gives the most results first: CIFAR-10, all 8 attacks, seed 0 (VIBE-FM-F with the
# no-defense, ABL and CBD rows, then VIBE-FM-A); seeds 1 and 2 of BadNets and Blend;
# then the Imagenette slice. Finished experiments are skipped and interrupted ones
# resume, so the script can be run again after a kill. Summaries:
# workdirs/fm_cpu/summary.md and workdirs/fm_cpu_imagenette/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
test -f weights/efficientnet_lite0.msgpack || \
  python -m vibe_jax.tools.convert --backbone=efficientnet_lite0 --out=weights/efficientnet_lite0.msgpack
sweep() { python experiments/sweep.py --config=configs/fm_cpu.py "$@"; }
sweep --dataset=cifar10 --variants=fm_f,fm_a --seeds=0 --root=workdirs/fm_cpu
sweep --dataset=cifar10 --variants=fm_f,fm_a --attacks=badnets,blend --seeds=1,2 --root=workdirs/fm_cpu
sweep --dataset=imagenette --variants=fm_f,fm_a --seeds=0 --root=workdirs/fm_cpu_imagenette
