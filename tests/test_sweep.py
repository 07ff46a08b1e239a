"""The sweep launcher: its commands and its summary table."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_dry_run_lists_one_command_per_experiment(tmp_path):
  out = subprocess.run([sys.executable, "experiments/sweep.py", "--dataset=cifar100",
                        "--variants=ss_f,fm_a", f"--root={tmp_path}", "--dry_run", "--",
                        "--config.seed=3"], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  assert len(out) == 4 * 2  # CIFAR-100 has 4 attacks
  assert all("--config.seed=3" in line and "vibe_jax.main" in line for line in out)
  assert any("configs/cifar100.py:attack=wanet,variant=fm_a" in line for line in out)


def test_summary_tabulates_results_with_provenance(tmp_path):
  run = tmp_path / "cifar10" / "blend" / "ss_f"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps({
      "seed": 0, "provenance": {"commit": "abc1234", "device": "1 x H100",
                                "cpu": "Xeon, 16 cores"},
      "stages": {"features": {"seconds": 30.2}},
      "rows": [{"method": "no defense", "clean_acc": 0.9, "asr": 0.99},
               {"method": "VIBE-F", "clean_acc": 0.91, "asr": 0.01,
                "pseudo_poisoned_true_agreement": 0.95,
                "pseudo_poisoned_relabelled": 0.99, "wall_time_s": 12.4,
                "pseudo_clean_target_relabelled": 0.02}]}))
  subprocess.run([sys.executable, "experiments/sweep.py", f"--root={tmp_path}",
                  "--collect_only"], cwd=ROOT, check=True, capture_output=True)
  table = (tmp_path / "summary.md").read_text()
  assert ("| cifar10/blend/ss_f | VIBE-F | 91.0 | 1.0 | 95.0 | 99.0 | 2.0 | 12 | 30 | 0 | abc1234 "
          "| 1 x H100 (Xeon, 16 cores) |") in table
  assert "| cifar10/blend/ss_f | no defense | 90.0 | 99.0 | - | - | - | - | 30 |" in table


def test_a_config_file_and_seeds_give_one_run_per_seed(tmp_path):
  out = subprocess.run([sys.executable, "experiments/sweep.py", "--dataset=imagenette",
                        "--config=configs/fm_cpu.py", "--variants=fm_f", "--attacks=blend",
                        "--seeds=0,2", f"--root={tmp_path}", "--dry_run"], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert len(out) == 2
  assert "--config=configs/fm_cpu.py:dataset=imagenette,attack=blend,variant=fm_f,seed=2" in out[1]
  assert f"--workdir={tmp_path}/imagenette/blend/fm_f/seed2" in out[1]


def test_the_pivot_table_has_one_row_per_attack_with_the_seed_spread(tmp_path):
  def write(attack, variant, seed, rows):
    run = tmp_path / "cifar10" / attack / variant / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"seed": seed, "rows": rows}))

  for seed, acc in ((0, 0.70), (1, 0.72), (2, 0.74)):
    write("blend", "fm_f", seed, [{"method": "no defense", "clean_acc": acc, "asr": 0.9},
                                  {"method": "VIBE-F", "clean_acc": acc, "asr": 0.02}])
  write("blend", "fm_a", 0, [{"method": "VIBE-A", "clean_acc": 0.7, "asr": 0.05}])
  subprocess.run([sys.executable, "experiments/sweep.py", f"--root={tmp_path}",
                  "--collect_only"], cwd=ROOT, check=True, capture_output=True)
  table = (tmp_path / "table.md").read_text().splitlines()
  assert table[0] == ("| dataset | attack | seeds | no defense ACC / ASR (%) | "
                      "VIBE-FM-A ACC / ASR (%) | VIBE-FM-F ACC / ASR (%) |")
  assert table[2] == ("| cifar10 | blend | 3 | 72.0 ± 2.0 / 90.0 ± 0.0 | 70.0 / 5.0 | "
                      "72.0 ± 2.0 / 2.0 ± 0.0 |")


def test_details_report_the_first_and_last_pseudo_labels_and_stage_times(tmp_path):
  run = tmp_path / "cifar10" / "wanet" / "fm_f" / "seed0"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps({
      "seed": 0, "stages": {"features": {"seconds": 700.4}},
      "rows": [{"method": "no defense", "clean_acc": 0.7, "asr": 0.5, "wall_time_s": 41.0},
               {"method": "VIBE-F", "clean_acc": 0.7, "asr": 0.05, "wall_time_s": 75.2,
                "pseudo_given_agreement": 0.9, "pseudo_poisoned_relabelled": 0.9,
                "pseudo_poisoned_true_agreement": 0.6,
                "pseudo_clean_target_relabelled": 0.125}]}))
  (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
      {"stage": "vibe", "step": 0, "event": "train", "loss": 1.0},
      {"stage": "vibe", "step": 0, "event": "estep", "clean_target_relabelled": 0.5},
      {"stage": "vibe", "step": 500, "event": "estep", "clean_target_relabelled": 0.2})))
  subprocess.run([sys.executable, "experiments/sweep.py", f"--root={tmp_path}",
                  "--collect_only"], cwd=ROOT, check=True, capture_output=True)
  table = (tmp_path / "details.md").read_text().splitlines()
  assert table[2] == ("| cifar10/wanet/fm_f/seed0 | VIBE-F | 90.0 | 60.0 | 50.0 -> 12.5 | "
                      "features 700, no defense 41, VIBE-F 75 |")
