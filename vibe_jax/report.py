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


def poisoned_summary(row: dict[str, Any]) -> str:
  """What a defense did to the known poisoned examples, in words: VIBE's
  pseudo-labels, ABL's isolation, CBD's weights ("-" when it reports nothing)."""
  if "pseudo_poisoned_relabelled" in row:
    return (f"relabelled {_percent(row['pseudo_poisoned_relabelled'])}%, to the true "
            f"class {_percent(row.get('pseudo_poisoned_true_agreement'))}%")
  if "abl_isolated_poisoned" in row:
    return (f"isolated {row['abl_isolated']}: {_percent(row['abl_isolated_poisoned'])}% "
            f"poisoned, {_percent(row.get('abl_poisoned_isolated'))}% of the poisoned")
  if "cert_acc_r0" in row:
    text = (f"certified ACC {_percent(row['cert_acc_r0'])}% at r=0, "
            f"{_percent(row.get('cert_acc_r0.25'))}% at r=0.25")
    if "cert_asr_r0" in row:
      text += f"; certified ASR {_percent(row['cert_asr_r0'])}% at r=0"
    return text
  if "cbd_poisoned_weight" in row:
    return (f"mean weight {row['cbd_poisoned_weight']:.2f}, "
            f"{_percent(row.get('cbd_poisoned_downweighted'))}% below 1")
  return "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """A Markdown table, one row per method: ACC and ASR in percent, what the defense
  did to the poisoned examples (`poisoned_summary`), the training images it saw
  (its supervised steps; self-supervised ones in brackets) and the wall time of
  each stage."""
  lines = ["| method | ACC (%) | ASR (%) | poisoned examples | images seen | wall time (s) |",
           "|---|---:|---:|---|---:|---:|"]
  for row in rows:
    times = f"{row.get('wall_time_s', 'n/a')}"
    extra = [f"{k.replace('_wall_time_s', '')} {v}" for k, v in row.items()
             if k.endswith("_wall_time_s")]
    if extra:
      times += f" (+ {', '.join(extra)})"
    seen = f"{row['images_seen']:,}" if "images_seen" in row else "n/a"
    if "ssl_images_seen" in row:
      seen += f" (+ SSL {row['ssl_images_seen']:,})"
    lines.append(f"| {row['method']} | {_percent(row['clean_acc'])} | "
                 f"{_percent(row['asr'])} | {poisoned_summary(row)} | {seen} | {times} |")
  return "\n".join(lines) + "\n"


def _subplots(*args, figsize):
  """(figure, axes) drawn off-screen with the Agg renderer. matplotlib's object
  API, not pyplot: pyplot's import (its backends, its global figure state) cost
  0.5 s of every run's end, and nothing here needs a window."""
  # Lazy: matplotlib is slow to import and only the end of a run draws.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=figsize)
  return fig, fig.subplots(*args)


def plot_comparison(rows: list[dict[str, Any]], out_path: pathlib.Path,
                    title: str = "") -> None:
  """A bar chart of ACC and ASR (%) per method into a PNG (comparison.png)."""

  methods = [r["method"] for r in rows]
  fig, ax = _subplots(figsize=(1.6 + 1.3 * len(rows), 3.6))
  at = list(range(len(rows)))
  for offset, key, label, colour in ((-0.2, "clean_acc", "ACC (clean)", "tab:blue"),
                                     (0.2, "asr", "ASR (triggered)", "tab:red")):
    values = [100 * r[key] if r.get(key) == r.get(key) and r.get(key) is not None else 0.0
              for r in rows]
    bars = ax.bar([i + offset for i in at], values, 0.4, label=label, color=colour)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
  ax.set_xticks(at, methods)
  ax.set(ylabel="%", ylim=(0, 110), title=title or "defenses on the same poisoned data")
  ax.legend(loc="upper right", fontsize=8)
  fig.tight_layout()
  files.save_with(out_path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def plot_certified(rows: list[dict[str, Any]], out_path: pathlib.Path, title: str = ""
                   ) -> bool:
  """Certified accuracy (solid) and certified ASR (dashed) against the radius, one
  colour per row that certified (rows with "certified"); False when none did."""
  rows = [r for r in rows if r.get("certified")]
  if not rows:
    return False

  fig, ax = _subplots(figsize=(5.6, 3.8))
  for i, row in enumerate(rows):
    colour = f"C{i}"
    for name, style, what in (("clean", "-", "certified ACC"), ("triggered", "--",
                                                                 "certified ASR")):
      curve = row["certified"].get(name)
      if curve:
        ax.plot(curve["radius"], [100 * v for v in curve["certified_accuracy"]], style,
                color=colour, marker="o", markersize=3, label=f"{row['method']}: {what}")
  ax.set(xlabel="radius (l2 of the training-time trigger)", ylabel="% of test images",
         ylim=(0, 101), title=title or "certified against the trigger radius")
  ax.legend(fontsize=7)
  fig.tight_layout()
  files.save_with(out_path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
  return True


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

  rows = read_rows(metrics_path)
  fig, (left, right) = _subplots(1, 2, figsize=(10, 3.8))
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
  if esteps:  # runs without an E-step (ensembles, baselines) leave this panel empty
    right.legend()
  else:
    right.text(0.5, 0.5, "no E-step in this run", ha="center", va="center",
               transform=right.transAxes)
  fig.tight_layout()
  files.save_with(out_path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
