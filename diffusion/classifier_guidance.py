"""Classifier guidance (Dhariwal & Nichol, 2021, "Diffusion Models Beat GANs", Algorithms 1 and 2).

A classifier p(y | x_t, t), trained on noised images (`classifier_loss`), steers a diffusion model towards
class y by the gradient g = scale * d log p(y | x_t) / d x_t (`log_prob_gradient`). The samplers apply it as
guided-diffusion does:

- DDPM (Algorithm 1, `condition_mean`): the step's mean moves by its variance times g: mu + Sigma g.
- DDIM (Algorithm 2, `condition_score`): the noise prediction moves by eps - sqrt(1 - a_t) g and x_0 is
  recomputed from it (after any clipping, as guided-diffusion does).
- DPM-Solver++, Euler and Heun: `score_guided` applies the same eps correction to the network's output
  before the sampler reads it (the score form, at the timesteps those samplers visit, fractional for the
  Karras samplers).

With scale 1 and an exact classifier, the eps correction turns the model's score into that of p(x_t | y)
(Bayes' rule); larger scales sharpen p(y | x_t)^scale. The gradient is taken at the sampler's current x_t and
network time t, which are the original (unrespaced) timesteps, as guided-diffusion's respaced cond_fn sees them.
"""
import jax
import jax.numpy as jnp

from diffusion.objectives import broadcast_to, predict_x0_eps
from diffusion.schedules import sigma_at_timestep


def classifier_loss(logits, labels):
  """Per-example cross-entropy of logits [B, K] against integer labels [B], and top-1 correctness (0/1)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return loss, (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def log_prob_gradient(classifier_fn, labels, scale):
  """g(x_t, t) = scale * d/dx_t sum_i log softmax(classifier_fn(x_t, t))_i[labels_i]: [B, ...] like x_t.

  classifier_fn(x, t) -> logits [B, K]; each example's log-probability depends only on its own input, so the
  gradient of the sum is the per-example gradient (guided-diffusion's cond_fn)."""
  def total_log_prob(x, t):
    log_probs = jax.nn.log_softmax(classifier_fn(x, t).astype(jnp.float32))
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

  def gradient(x, t):
    return scale * jax.grad(total_log_prob)(x.astype(jnp.float32), t)

  return gradient


def score_guided(model_fn, objective, alphas_cumprod, gradient):
  """model_fn(x_t, t) of a VP `objective` -> (model_fn of eps - sqrt(1 - a_t) g(x_t, t), 'eps').

  a_t at fractional t follows the schedule's log-sigma interpolation (schedules.sigma_at_timestep), the noise
  level the Karras samplers assign to that t."""
  def guided(x, t):
    sigma_ve = broadcast_to(sigma_at_timestep(alphas_cumprod, t), x)
    alpha = 1 / jnp.sqrt(1 + sigma_ve**2)
    sigma = sigma_ve * alpha
    _, eps = predict_x0_eps(objective, model_fn(x, t), x, alpha, sigma)
    return eps - sigma * gradient(x, t)

  return guided, 'eps'
