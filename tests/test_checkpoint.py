"""Checkpoints: round trip, and fallback from a corrupt latest step."""

import logging

import jax.numpy as jnp
import numpy as np

from vibe_jax.checkpoint import Checkpointer
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
