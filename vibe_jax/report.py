"""Result files: JSON lines of metrics, results.json and a Markdown table."""

import json
import pathlib
from typing import Any

from vibe_jax import files

__all__ = ["JsonLines", "read_rows", "markdown_table", "plot_curves", "write_results"]


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a JSON-lines file; a line cut short by a killed run is skipped."""
  rows = []
  for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return rows


class JsonLines:
  """Appends one JSON object per call to a file (and keeps the file open); in a
  process other than 0 (`files.is_writer`) it writes nothing."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._file = open(path, "a", encoding="utf-8") if files.is_writer() else None

  def __call__(self, row: dict[str, Any]) -> None:
    if self._file is None:
      return
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def truncate(self, stage: str, step: int) -> None:
    """Drops the rows a resumed stage will write again: its "train" rows after
    `step` and its other events (E-steps, filtering) at or after `step`; the file
    is rewritten atomically."""
    if self._file is None:
      return
    rows = read_rows(self.path)
    keep = [r for r in rows if r.get("stage") != stage or
            (r.get("step", 0) <= step if r.get("event") == "train" else r.get("step", 0) < step)]
    if len(keep) == len(rows):
      return
    self._file.close()
    files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
    self._file = open(self.path, "a", encoding="utf-8")

  def close(self) -> None:
    """Closes the file."""
    if self._file is not None:
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
  files.write_json(workdir / "results.json", results)
  prov = results["provenance"]
  text = (markdown_table(results["rows"]) +
          f"\nseed {results['seed']}, commit {prov['commit']}, device {prov['device']}\n")
  files.write_text(workdir / "results.md", text)


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

  rows = read_rows(metrics_path)
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
  files.save_with(out_path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
  plt.close(fig)
