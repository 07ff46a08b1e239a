"""Run a slice of the paper's grid, one experiment after another, and tabulate it.

  python experiments/sweep.py --dataset=cifar10 --variants=ss_f,fm_f \
      --attacks=badnets,blend --root=workdirs/sweep -- --config.data.data_dir=~/tfds

  # frozen EfficientNet-Lite0 on a CPU, three seeds (the README's FM table):
  python experiments/sweep.py --config=configs/fm_cpu.py --dataset=cifar10 \
      --variants=fm_f,fm_a --attacks=badnets,blend --seeds=0,1,2 --root=workdirs/fm_cpu

Each experiment runs `python -m vibe_jax.main --config=configs/DATASET.py:attack=A,
variant=V --workdir=ROOT/DATASET/A/V` plus the overrides after `--`; with
`--config=FILE` it runs `FILE:dataset=DATASET,attack=A,variant=V`; with `--seeds`,
one run per seed (`,seed=S`, workdir `.../V/seedS`). One whose workdir already
holds results.json is skipped, one that was interrupted resumes from its
checkpoints. Afterwards (or with --collect_only) ROOT/summary.md gets one Markdown
row per experiment and method, with provenance and wall times (the method's, and
the run's feature extraction), from the results.json files, and ROOT/table.md one
row per dataset and attack with every method's ACC / ASR (mean ± sd over seeds), and
ROOT/details.md one row per VIBE run (pseudo-labels of the poisoned and of the
target class's clean examples, wall time per stage). --dry_run prints the
commands instead.
"""

import argparse
import json
import pathlib
import subprocess
import sys

from vibe_jax.config import grid

ROOT = pathlib.Path(__file__).resolve().parents[1]


def commands(dataset, attacks, variants, root, extra, config="", seeds=()):
  """[(workdir, argv)] of the experiments to run."""
  out = []
  for attack in attacks:
    for variant in variants:
      for seed in seeds or (None,):
        workdir = root / dataset / attack / variant
        arg = f"attack={attack},variant={variant}"
        if config:
          arg = f"dataset={dataset},{arg}"
        if seed is not None:
          workdir, arg = workdir / f"seed{seed}", f"{arg},seed={seed}"
        argv = [sys.executable, "-m", "vibe_jax.main",
                f"--config={config or f'configs/{dataset}.py'}:{arg}",
                f"--workdir={workdir}", *extra]
        out.append((workdir, argv))
  return out


def summary(root: pathlib.Path) -> str:
  """A Markdown table of every results.json under `root`."""
  lines = ["| experiment | method | ACC (%) | ASR (%) | poisoned: pseudo = true (%) | "
           "poisoned relabelled (%) | clean target relabelled (%) | wall (s) | features (s) "
           "| seed | commit | device |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
  pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
  sec = lambda v: "-" if v is None else f"{v:.0f}"
  for path in sorted(root.rglob("results.json")):
    results = json.loads(path.read_text())
    name = str(path.parent.relative_to(root))
    prov = results.get("provenance", {})
    extraction = results.get("stages", {}).get("features", {}).get("seconds")
    device = prov.get("device", "?") + (f" ({prov['cpu']})" if prov.get("cpu") else "")
    for row in results["rows"]:
      lines.append(f"| {name} | {row['method']} | {pct(row['clean_acc'])} | "
                   f"{pct(row['asr'])} | {pct(row.get('pseudo_poisoned_true_agreement'))} | "
                   f"{pct(row.get('pseudo_poisoned_relabelled'))} | "
                   f"{pct(row.get('pseudo_clean_target_relabelled'))} | "
                   f"{sec(row.get('wall_time_s'))} | {sec(extraction)} | {results['seed']} | "
                   f"{prov.get('commit', '?')} | {device} |")
  return "\n".join(lines) + "\n"


def _cell(values: list[float]) -> str:
  """A percentage, or mean ± sample standard deviation over seeds."""
  pct = [100 * v for v in values]
  if len(pct) == 1:
    return f"{pct[0]:.1f}"
  mean = sum(pct) / len(pct)
  sd = (sum((v - mean) ** 2 for v in pct) / (len(pct) - 1)) ** 0.5
  return f"{mean:.1f} ± {sd:.1f}"


def pivot(root: pathlib.Path) -> str:
  """One Markdown row per (dataset, attack): ACC / ASR of each method (VIBE named by
  its variant directory, e.g. VIBE-FM-F), mean ± sd where several seeds ran, and
  the seeds counted; from the results.json files under `root` (laid out
  DATASET/ATTACK/VARIANT[/seedS] as `commands` makes them)."""
  cells: dict[tuple[str, str], dict[str, list]] = {}
  methods: list[str] = []
  seeds: dict[tuple[str, str], set] = {}
  for path in sorted(root.rglob("results.json")):
    parts = path.parent.relative_to(root).parts
    if len(parts) < 3:
      continue
    dataset, attack, variant = parts[:3]
    results = json.loads(path.read_text())
    key = (dataset, attack)
    seeds.setdefault(key, set()).add(results["seed"])
    for row in results["rows"]:
      method = row["method"]
      if method.startswith("VIBE"):
        method = f"VIBE-{variant.upper().replace('_', '-')}"
      if method not in methods:
        methods.append(method)
      got = cells.setdefault(key, {}).setdefault(method, [[], []])
      got[0].append(row["clean_acc"])
      got[1].append(row["asr"])
  # The undefended row first, VIBE last, the peers between them in the order they ran.
  methods.sort(key=lambda m: (m != "no defense", m.startswith("VIBE"), m))
  lines = ["| dataset | attack | seeds | " + " | ".join(f"{m} ACC / ASR (%)" for m in methods)
           + " |", "|---|---|---:|" + "---:|" * len(methods)]
  for key in sorted(cells):
    row = [f"{_cell(cells[key][m][0])} / {_cell(cells[key][m][1])}" if m in cells[key]
           else "-" for m in methods]
    lines.append(f"| {key[0]} | {key[1]} | {len(seeds[key])} | " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def _first_estep(workdir: pathlib.Path) -> dict:
  """The first E-step's metrics row of a run (metrics.jsonl), or {}."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return {}
  for line in path.read_text().splitlines():
    row = json.loads(line)
    if row.get("event") == "estep" and row.get("step") == 0:
      return row
  return {}


def details(root: pathlib.Path) -> str:
  """One Markdown row per VIBE run: what its pseudo-labels did to the poisoned
  examples and to the target class's clean ones (after the first E-step and at the
  end), and the wall time of each stage of the run (feature extraction, then every
  method's training and evaluation)."""
  lines = ["| experiment | method | poisoned relabelled (%) | poisoned given their true label "
           "(%) | clean target relabelled, first E-step -> end (%) | wall time per stage (s) |",
           "|---|---|---:|---:|---:|---|"]
  pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
  for path in sorted(root.rglob("results.json")):
    results = json.loads(path.read_text())
    name = str(path.parent.relative_to(root))
    stages = []
    features = results.get("stages", {}).get("features", {})
    if features:
      stages.append(f"features {features['seconds']:.0f}")
    stages += [f"{row['method']} {row['wall_time_s']:.0f}" for row in results["rows"]
               if row.get("wall_time_s") is not None]
    first = _first_estep(path.parent)
    for row in results["rows"]:
      if "pseudo_given_agreement" not in row:
        continue
      lines.append(f"| {name} | {row['method']} | {pct(row.get('pseudo_poisoned_relabelled'))} | "
                   f"{pct(row.get('pseudo_poisoned_true_agreement'))} | "
                   f"{pct(first.get('clean_target_relabelled'))} -> "
                   f"{pct(row.get('pseudo_clean_target_relabelled'))} | {', '.join(stages)} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="cifar10", choices=sorted(grid.ATTACKS))
  parser.add_argument("--attacks", default="", help="comma-separated; default: all")
  parser.add_argument("--variants", default=",".join(grid.VARIANTS))
  parser.add_argument("--root", default="workdirs/sweep")
  parser.add_argument("--config", default="",
                      help="a config file taking dataset=,attack=,variant= (default: "
                           "configs/DATASET.py)")
  parser.add_argument("--seeds", default="", help="comma-separated; one run per seed")
  parser.add_argument("--dry_run", action="store_true")
  parser.add_argument("--collect_only", action="store_true")
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != "--"]
  root = pathlib.Path(args.root)
  attacks = args.attacks.split(",") if args.attacks else list(grid.ATTACKS[args.dataset])
  unknown = [a for a in attacks if a not in grid.ATTACKS[args.dataset]]
  if unknown:
    sys.exit(f"attacks {unknown} are not in the {args.dataset} grid {grid.ATTACKS[args.dataset]}")
  if not args.collect_only:
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    for workdir, argv in commands(args.dataset, attacks, args.variants.split(","), root, extra,
                                  args.config, seeds):
      if args.dry_run:
        print(" ".join(argv))
        continue
      if (workdir / "results.json").exists():
        print(f"done already: {workdir}")
        continue
      print(f"running: {workdir}", flush=True)
      subprocess.run(argv, cwd=ROOT, check=True)
  if not args.dry_run:
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.md").write_text(summary(root))
    (root / "table.md").write_text(pivot(root))
    (root / "details.md").write_text(details(root))
    print(f"wrote {root / 'summary.md'}, {root / 'table.md'} and {root / 'details.md'}")


if __name__ == "__main__":
  main()
