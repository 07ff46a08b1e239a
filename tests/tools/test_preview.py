"""The attack preview command."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, random_folder


@pytest.mark.parametrize("attack", ["badnets", "wanet"])
def test_preview_writes_a_grid(tmp_path, attack):
  root = random_folder(tmp_path / "data")
  out = tmp_path / "p.png"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "vibe_jax.tools.preview",
                        f"--attack={attack}", f"--dataset={root}", f"--out={out}",
                        "--num=2"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  grid = np.asarray(Image.open(out))
  # Three rows (clean, poisoned, difference) of 2 tiles of 32 * 4 px plus gaps.
  assert grid.shape == (3 * (128 + 4), 2 * (128 + 4), 3)
  assert grid[132:264].tolist() != grid[:132].tolist()


def test_preview_names_an_unknown_attack(tmp_path):
  root = random_folder(tmp_path / "data")
  run = subprocess.run([sys.executable, "-m", "vibe_jax.tools.preview", "--attack=nope",
                        f"--dataset={root}", f"--out={tmp_path / 'p.png'}"], cwd=ROOT,
                       capture_output=True, text=True)
  assert run.returncode != 0 and "unknown attack 'nope'" in run.stderr
