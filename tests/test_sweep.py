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
      "seed": 0, "provenance": {"commit": "abc1234", "device": "1 x H100"},
      "rows": [{"method": "no defense", "clean_acc": 0.9, "asr": 0.99},
               {"method": "VIBE-F", "clean_acc": 0.91, "asr": 0.01,
                "pseudo_poisoned_true_agreement": 0.95,
                "pseudo_poisoned_relabelled": 0.99}]}))
  subprocess.run([sys.executable, "experiments/sweep.py", f"--root={tmp_path}",
                  "--collect_only"], cwd=ROOT, check=True, capture_output=True)
  table = (tmp_path / "summary.md").read_text()
  assert "| cifar10/blend/ss_f | VIBE-F | 91.0 | 1.0 | 95.0 | 99.0 | 0 | abc1234 | 1 x H100 |" in table
  assert "| cifar10/blend/ss_f | no defense | 90.0 | 99.0 | - | - |" in table
