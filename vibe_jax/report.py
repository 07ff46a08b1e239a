"""Result files: JSON lines of metrics, results.json and a Markdown table."""

import json
import pathlib
from typing import Any

__all__ = ["JsonLines", "markdown_table", "plot_curves", "write_results"]


class JsonLines:
  """Appends one JSON object per call to a file (and keeps the file open)."""

  def __init__(self, path: pathlib.Path):
    self._file = open(path, "a", encoding="utf-8")

  def __call__(self, row: dict[str, Any]) -> None:
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _percent(value: Any) -> str:
  return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """A Markdown table, one row per method: ACC and ASR in percent, then (VIBE) the
  pseudo-labels of the poisoned examples (share equal to the true label, share
  moved off the attack label) and the wall time of each stage."""
  lines = ["| method | ACC (%) | ASR (%) | poisoned: pseudo = true (%) | "
           "poisoned relabelled (%) | wall time (s) |", "|---|---:|---:|---:|---:|---:|"]
  for row in rows:
    times = f"{row.get('wall_time_s', 'n/a')}"
    extra = [f"{k.replace('_wall_time_s', '')} {v}" for k, v in row.items()
             if k.endswith("_wall_time_s")]
    if extra:
      times += f" (+ {', '.join(extra)})"
    lines.append(f"| {row['method']} | {_percent(row['clean_acc'])} | "
                 f"{_percent(row['asr'])} | "
                 f"{_percent(row.get('pseudo_poisoned_true_agreement'))} | "
                 f"{_percent(row.get('pseudo_poisoned_relabelled'))} | {times} |")
  return "\n".join(lines) + "\n"


def write_results(workdir: pathlib.Path, results: dict[str, Any]) -> None:
  """Writes results.json and results.md (table plus provenance) to `workdir`."""
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  prov = results["provenance"]
  text = (markdown_table(results["rows"]) +
          f"\nseed {results['seed']}, commit {prov['commit']}, device {prov['device']}\n")
  (workdir / "results.md").write_text(text)


def plot_curves(metrics_path: pathlib.Path, out_path: pathlib.Path) -> None:
  """Draws training curves from metrics.jsonl into a PNG.

  Left: the loss of each stage against the step. Right: after each E-step, the
  pseudo-labels' agreement with the given and the true labels and the share of
  poisoned examples relabelled.
  """
  # Lazy: matplotlib is slow to import and only the end of a run draws.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
  for stage in dict.fromkeys(r["stage"] for r in rows):
    train = [r for r in rows if r["stage"] == stage and r["event"] == "train"]
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label=stage)
  left.set(xlabel="step", ylabel="loss", title="M-step loss")
  left.legend()
  esteps = [r for r in rows if r["event"] == "estep"]
  for key, label in (("given_agreement", "= given label"),
                     ("true_agreement", "= true label"),
                     ("poisoned_relabelled", "poisoned relabelled")):
    points = [(r["step"], 100 * r[key]) for r in esteps if key in r]
    if points:
      right.plot(*zip(*points), marker="o", label=label)
  right.set(xlabel="step", ylabel="% of training examples", title="E-step pseudo-labels",
            ylim=(0, 101))
  right.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
