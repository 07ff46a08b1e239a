"""The student's loss: knowledge distillation from the teacher plus cross-entropy
(Hinton et al.; the form of `LukasStruppek/Robust_Training_on_Poisoned_Samples`'s
`losses/kl_loss.py`).

  loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE

KL is summed over classes and averaged over the batch (torch's "batchmean"). The
reference computes its CE on the temperature-scaled log-probabilities
log_softmax(s / T) (it passes them to `F.cross_entropy`, whose own log-softmax
leaves them unchanged), not on s: `scaled_ce=True` (the default, as the
reference) keeps that; False uses the usual CE on s. Our classifier's scores are
log p(l|x), which play the role of logits here.
"""

import jax
import jax.numpy as jnp

from vibe_jax import mstep

__all__ = ["distillation_loss", "make_student_step"]


def distillation_loss(student: jax.Array, teacher: jax.Array, labels: jax.Array, *,
                      alpha: float, temperature: float, scaled_ce: bool = True) -> jax.Array:
  """The mean loss over a batch of (B, K) student and teacher scores and (B,) labels."""
  log_s = jax.nn.log_softmax(student / temperature, axis=-1)
  log_t = jax.nn.log_softmax(teacher / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
  ce_scores = log_s if scaled_ce else jax.nn.log_softmax(student, axis=-1)
  ce = -jnp.take_along_axis(ce_scores, labels[:, None], axis=-1)[:, 0]
  return jnp.mean(alpha * temperature**2 * kl + (1.0 - alpha) * ce)


def make_student_step(model, *, alpha: float, temperature: float, scaled_ce: bool):
  """The pure student step `(state, batch) -> (state, metrics)`: the frozen teacher
  (`state.extra["teacher"]`, evaluation mode) scores the same (augmented) batch of
  variation images the student trains on."""

  def step(state, batch: dict):
    x, y = batch["x"], batch["y"]
    teacher = jax.lax.stop_gradient(model.apply(state.extra["teacher"], x))

    def loss_fn(params):
      scores, batch_stats = mstep.apply_in_training(model, state, params, "__call__", x)
      loss = distillation_loss(scores, teacher, y, alpha=alpha, temperature=temperature,
                               scaled_ce=scaled_ce)
      agree = jnp.mean(jnp.argmax(scores, -1) == jnp.argmax(teacher, -1))
      return loss, (batch_stats, agree)

    (loss, (batch_stats, agree)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), {
        "loss": loss, "teacher_agreement": agree}

  return step
