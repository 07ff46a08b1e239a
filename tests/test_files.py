"""Atomic file replacement."""

import pytest

from vibe_jax import files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "results.json"
  files.write_json(path, {"acc": 0.9})
  before = path.read_text()

  def broken(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      f.write('{"acc": 0.')  # half written, then the disk fills up
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError):
    files.save_with(path, broken)
  assert path.read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
  files.write_text(path, "new")
  assert path.read_text() == "new"
