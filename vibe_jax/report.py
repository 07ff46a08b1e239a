"""Result files: JSON lines of metrics, results.json and a Markdown table."""

import json
import pathlib
from typing import Any

__all__ = ["JsonLines", "markdown_table", "write_results"]


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
  """A Markdown table with one row per method: ACC and ASR in percent."""
  lines = ["| method | ACC (%) | ASR (%) |", "|---|---:|---:|"]
  for row in rows:
    lines.append(f"| {row['method']} | {_percent(row['clean_acc'])} | "
                 f"{_percent(row['asr'])} |")
  return "\n".join(lines) + "\n"


def write_results(workdir: pathlib.Path, results: dict[str, Any]) -> None:
  """Writes results.json and results.md (table plus provenance) to `workdir`."""
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  prov = results["provenance"]
  text = (markdown_table(results["rows"]) +
          f"\nseed {results['seed']}, commit {prov['commit']}, device {prov['device']}\n")
  (workdir / "results.md").write_text(text)
