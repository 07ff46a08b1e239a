"""Result files: metric rows of a resumed stage are written once."""

import json

from vibe_jax import report


def test_truncate_drops_what_a_resumed_stage_writes_again(tmp_path):
  path = tmp_path / "metrics.jsonl"
  log = report.JsonLines(path)
  for row in ({"stage": "ssl", "event": "train", "step": 30},
              {"stage": "vibe", "event": "estep", "step": 0},
              {"stage": "vibe", "event": "train", "step": 10},
              {"stage": "vibe", "event": "estep", "step": 20},
              {"stage": "vibe", "event": "train", "step": 20},
              {"stage": "vibe", "event": "train", "step": 30}):
    log(row)
  log.close()
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"stage": "vibe", "ev')  # a line cut short by a kill
  log = report.JsonLines(path)
  log.truncate("vibe", 20)  # resumed from the checkpoint at step 20
  log({"stage": "vibe", "event": "estep", "step": 20})
  log.close()
  rows = [(r["stage"], r["event"], r["step"]) for r in report.read_rows(path)]
  assert rows == [("ssl", "train", 30), ("vibe", "estep", 0), ("vibe", "train", 10),
                  ("vibe", "train", 20), ("vibe", "estep", 20)]
  assert all(json.loads(line) for line in path.read_text().splitlines())
