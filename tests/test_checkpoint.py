"""Checkpoints: round trip, fallback from a corrupt latest step, checksums."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vibe_jax.checkpoint import Checkpointer, state_checksum
from vibe_jax.train import TrainState


def _state(value):
  return TrainState(step=jnp.asarray(value, jnp.int32), apply_fn=None, tx=None,
                    params={"head": {"mu": jnp.full((2, 3), float(value))}},
                    opt_state=(), extra={"pseudo_labels": jnp.arange(4) + value})


def test_round_trip_and_fallback_from_corrupt_latest(tmp_path, caplog):
  ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=3)
  for value in (1, 2):
    ckpt.save(value, _state(value))
  ckpt.close()

  # Corrupt step 2: truncate every data file in it.
  for path in (tmp_path / "ckpt" / "2").rglob("*"):
    if path.is_file():
      path.write_bytes(b"")
  ckpt = Checkpointer(tmp_path / "ckpt")
  with caplog.at_level(logging.WARNING):
    restored, step = ckpt.restore_or(_state(0))
  assert step == 1
  np.testing.assert_array_equal(restored.params["head"]["mu"], np.ones((2, 3)))
  np.testing.assert_array_equal(restored.extra["pseudo_labels"], np.arange(4) + 1)
  assert "could not be restored" in caplog.text
  # The corrupt step is kept aside, not deleted; step 1 is untouched.
  kept = [p.name for p in (tmp_path / "ckpt").iterdir()]
  assert any(name.startswith("corrupt-2-") for name in kept)
  assert "1" in kept
  # Saving again at step 2 works after the fallback.
  ckpt.save(2, _state(5))
  ckpt.close()
  restored, step = Checkpointer(tmp_path / "ckpt").restore_or(_state(0))
  assert step == 2 and int(restored.step) == 5


def test_empty_directory_returns_the_template(tmp_path):
  template = _state(7)
  restored, step = Checkpointer(tmp_path / "none").restore_or(template)
  assert step is None and restored is template


def _big_state(seed):
  """A state whose data file is large enough that a flip lands inside the values."""
  rng = np.random.default_rng(seed)
  normal = lambda n: jnp.asarray(rng.standard_normal(n), jnp.float32)
  return TrainState(step=jnp.asarray(seed, jnp.int32), apply_fn=None, tx=None,
                    params={"w": normal(4096)}, opt_state=({"mu": normal(64)},),
                    extra={})


def _assert_same(restored, expected):
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, expected)


def test_checksum_is_recorded_and_verified(tmp_path, caplog):
  ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
  for seed in (1, 2, 3):
    ckpt.save(seed, _big_state(seed))
  ckpt.close()

  record = json.loads((tmp_path / "ckpt" / "checksums" / "3.json").read_text())
  assert record == {"step": 3, "sha256": state_checksum(_big_state(3))[0], "leaves": 3}
  with caplog.at_level(logging.WARNING):
    restored, step = Checkpointer(tmp_path / "ckpt").restore_or(_big_state(0))
  assert step == 3
  _assert_same(restored, _big_state(3))
  assert not [r for r in caplog.records if r.name == "vibe_jax.checkpoint"]
  # Step 1 fell to max_to_keep, and its record with it.
  names = sorted(p.name for p in (tmp_path / "ckpt" / "checksums").iterdir())
  assert names == ["2.json", "3.json"]


def test_flipped_bytes_are_detected_and_the_previous_step_restored(tmp_path, caplog):
  directory = tmp_path / "ckpt"
  ckpt = Checkpointer(directory)
  for seed in (1, 2):
    ckpt.save(seed, _big_state(seed))
  ckpt.close()

  # Flip bytes in the middle of step 2's largest file (the OCDBT data file holding
  # the 4096 floats), keeping its length, as a disk or copy error would.
  data = max((p for p in (directory / "2").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  content = bytearray(data.read_bytes())
  middle = len(content) // 2
  for i in range(middle, middle + 16):
    content[i] ^= 0xFF
  data.write_bytes(bytes(content))

  # Orbax itself reads the flipped step without error but with changed values,
  # which only the checksum catches (if it ever fails to read, that is caught too).
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _big_state(0))
  with ocp.CheckpointManager(directory) as manager:
    try:
      flipped = manager.restore(2, args=ocp.args.StandardRestore(abstract))
    except Exception:  # noqa: BLE001 -- a read error is a detection too
      flipped = None
  if flipped is not None:
    assert not np.array_equal(flipped.params["w"], _big_state(2).params["w"])

  with caplog.at_level(logging.WARNING):
    restored, step = Checkpointer(directory).restore_or(_big_state(0))
  assert step == 1
  _assert_same(restored, _big_state(1))
  assert "step 2" in caplog.text
  assert ("checksum mismatch" if flipped is not None else "could not be restored"
          ) in caplog.text
  kept = [p.name for p in directory.iterdir()]
  assert "2" not in kept
  corrupt = [p for p in directory.iterdir() if p.name.startswith("corrupt-2-")]
  assert len(corrupt) == 1 and (corrupt[0] / "checksum.json").exists()
  assert not (directory / "checksums" / "2.json").exists()


def test_step_without_checksum_restores_with_a_warning(tmp_path, caplog):
  ckpt = Checkpointer(tmp_path / "ckpt")
  ckpt.save(1, _big_state(1))
  ckpt.close()
  (tmp_path / "ckpt" / "checksums" / "1.json").unlink()

  with caplog.at_level(logging.WARNING):
    restored, step = Checkpointer(tmp_path / "ckpt").restore_or(_big_state(0))
  assert step == 1
  _assert_same(restored, _big_state(1))
  assert "could not be verified" in caplog.text
  assert (tmp_path / "ckpt" / "1").exists()
