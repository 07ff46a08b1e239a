"""The label-consistent attack's offline step: PGD, and the cache the attack reads."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax

from tests.helpers import ROOT, random_folder
from vibe_jax import attacks
from vibe_jax.data import sources
from vibe_jax.data.poisoned import poison_train_set
from vibe_jax.tools.lc_perturb import pgd_linf


def test_pgd_stays_in_the_budget_and_raises_the_loss():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(8 * 8 * 3, 4)), jnp.float32)
  logits_fn = lambda x: x.reshape(len(x), -1) @ w
  x = jnp.asarray(rng.uniform(0.2, 0.8, (6, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 6))
  adv = pgd_linf(logits_fn, x, y, eps=4 / 255, step=1 / 255, steps=10)
  assert float(jnp.max(jnp.abs(adv - x))) <= 4 / 255 + 1e-6
  loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(logits_fn(z), y).mean()
  assert float(loss(adv)) > float(loss(x))


def test_lc_perturb_writes_the_cache_the_attack_reads(tmp_path):
  root = random_folder(tmp_path / "data", per_class=8)
  out = tmp_path / "lc.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "vibe_jax.tools.lc_perturb",
                        f"--dataset={root}", f"--out={out}", "--epochs=1",
                        "--batch_size=8", "--rate=0.5"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "misclassified after PGD" in run.stdout
  source = sources.open_source(str(root), "train")
  attack = attacks.build("lc", rate=0.5, perturbation_path=str(out))
  train = poison_train_set(source, attack)
  with np.load(out) as cache:
    np.testing.assert_array_equal(cache["indices"], np.flatnonzero(train.poisoned))
    i = int(cache["indices"][0])
    clean = source[i][0].astype(int)
    delta = np.abs(cache["images"][0].astype(int) - clean)
    assert delta.max() <= 17 and delta.max() > 0  # eps = 16/255, truncation adds 1
