"""The label-consistent attack's offline step: adversarial perturbations, cached.

  python -m vibe_jax.tools.lc_perturb --dataset=../shared/data/cifar10-jpeg \
      --out=lc_cifar10_seed0.npz

Chooses the poisoned examples exactly as the `lc` attack will (seed, rate of the
target class), trains a benign `SmallCNN` on the clean training set (or takes more
epochs with --epochs), runs untargeted L-inf PGD against it on those images (eps
16/255, step 1.5/255, 30 steps, no random start, inputs in [0, 1]; spec 11.8) and
writes `indices` and the truncated uint8 `images` to --out. Pass that file to the
attack as `perturbation_path`.
"""

import functools
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vibe_jax.attacks.selection import poisoned_indices
from vibe_jax.data import sources
from vibe_jax.errors import InputError
from vibe_jax.models.cnn import SmallCNN

__all__ = ["pgd_linf", "train_benign_model", "perturb"]

_DATASET = flags.DEFINE_string("dataset", None, "TFDS name or image-folder path.")
_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
_SEED = flags.DEFINE_integer("seed", 0, "Attack seed (must match the lc attack's).")
_RATE = flags.DEFINE_float("rate", 0.25, "Share of the target class to poison.")
_TARGET = flags.DEFINE_integer("target", 0, "Target class.")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs of benign-model training.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")


def pgd_linf(logits_fn, images: jax.Array, labels: jax.Array, *, eps: float = 16 / 255,
             step: float = 1.5 / 255, steps: int = 30) -> jax.Array:
  """Untargeted L-inf PGD from the clean images (no random start), in [0, 1].

  Args:
    logits_fn: images in [0, 1] (B, H, W, 3) -> logits (B, K).
    images: float images in [0, 1].
    labels: true labels, whose cross-entropy is maximised.
    eps, step, steps: the budget, step size and number of steps.
  """

  def loss(x):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), labels).sum()

  def body(_, x):
    x = x + step * jnp.sign(jax.grad(loss)(x))
    return jnp.clip(jnp.clip(x, images - eps, images + eps), 0.0, 1.0)

  return jax.lax.fori_loop(0, steps, body, images)


def train_benign_model(images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                       epochs: int, batch_size: int, seed: int):
  """Trains `SmallCNN` with Adam on uint8 images scaled to [0, 1]; returns
  (model, variables)."""
  model = SmallCNN(num_classes=num_classes)
  rng = jax.random.PRNGKey(seed)
  variables = model.init(rng, jnp.zeros((1, *images.shape[1:])), train=False)
  tx = optax.adam(1e-3)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state, x, y):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                    mutable=["batch_stats"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return ce, updates["batch_stats"]

    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  order_rng = np.random.default_rng(seed)
  batch_size = min(batch_size, len(labels))
  for _ in range(epochs):
    order = order_rng.permutation(len(labels))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      params, stats, opt_state = step(params, stats, opt_state,
                                      images[idx].astype(np.float32) / 255.0, labels[idx])
  return model, {"params": params, "batch_stats": stats}


def perturb(model, variables, images: np.ndarray, labels: np.ndarray,
            batch_size: int = 256) -> np.ndarray:
  """PGD-perturbed copies of uint8 `images`, truncated back to uint8."""
  logits_fn = functools.partial(model.apply, variables, train=False)
  attack = jax.jit(lambda x, y: pgd_linf(logits_fn, x, y))
  out = []
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size].astype(np.float32) / 255.0
    adv = attack(x, labels[start:start + batch_size])
    out.append((np.asarray(adv) * 255.0).astype(np.uint8))  # truncation, as the reference
  return np.concatenate(out) if out else images[:0]


def main(argv):
  """Command line: see the module docstring."""
  del argv
  try:
    source = sources.open_source(_DATASET.value, "train", data_dir=_DATA_DIR.value)
  except InputError as error:
    sys.exit(f"FATAL: {error}")
  chosen = poisoned_indices(source.labels, _RATE.value, _TARGET.value, _SEED.value,
                            clean_label=True)
  print(f"decoding {len(source)} training images ...", flush=True)
  images = source.images(range(len(source)))
  model, variables = train_benign_model(images, source.labels, source.num_classes,
                                        epochs=_EPOCHS.value, batch_size=_BATCH.value,
                                        seed=_SEED.value)
  predict = jax.jit(lambda x: jnp.argmax(model.apply(variables, x, train=False), -1))
  sample = np.arange(0, len(source), max(1, len(source) // 2000))
  accuracy = float(np.mean(np.asarray(predict(images[sample] / 255.0)) ==
                           source.labels[sample]))
  adversarial = perturb(model, variables, images[chosen], source.labels[chosen])
  fooled = float(np.mean(np.asarray(predict(adversarial / 255.0)) != source.labels[chosen]))
  np.savez(_OUT.value, indices=chosen, images=adversarial, seed=_SEED.value,
           rate=_RATE.value, target=_TARGET.value)
  print(f"wrote {_OUT.value}: {len(chosen)} perturbed images of class {_TARGET.value}; "
        f"benign model training accuracy {100 * accuracy:.1f}%, misclassified after PGD "
        f"{100 * fooled:.1f}%")


if __name__ == "__main__":
  flags.mark_flags_as_required(["dataset", "out"])
  app.run(main)
