"""Learned reverse-process variances (Nichol & Dhariwal, 2021, "Improved DDPM"), as ADM and DiT train them.

With `config.diffusion.learn_sigma` the network outputs 2C channels: the usual prediction (eps, x0 or v)
and C channels v in [-1, 1] (unconstrained; read as frac = (v + 1) / 2) that interpolate the log variance
of p(x_{t-1} | x_t) between the two fixed choices,

    log var = frac * log beta_t + (1 - frac) * log beta~_t,   beta~_t = beta_t (1 - a_prev) / (1 - a_t),

with beta~ at the last step (a_prev = 1, beta~ = 0) clipped to the step before's value. Training adds the
variational bound term L_vlb (KL of the true posterior q(x_{t-1} | x_t, x_0) from p, in bits per dimension,
and at t = 0 the negative log-likelihood of x_0 under a Gaussian discretised to 256 bins) to the simple
MSE, with the prediction's gradient stopped in that term so it trains only the variance ("hybrid" loss,
L_simple + L_vlb * T / 1000). The DDPM sampler then draws with the learned variance; the deterministic
samplers read only the prediction channels.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import broadcast_to, predict_x0_eps


def split_output(output):
  """[..., 2C] network output -> (prediction [..., C], variance values [..., C])."""
  return jnp.split(output, 2, axis=-1)


def posterior_log_variance_bounds(alphas_cumprod, t):
  """(log beta~_t clipped, log beta_t) at integer timesteps t of the full schedule (a_prev = a_{t-1}, 1 at
  t = 0, where beta~ takes t = 1's value)."""
  ac = np.asarray(alphas_cumprod, np.float64)
  prev = np.concatenate([[1.0], ac[:-1]])
  beta = 1 - ac / prev
  beta_tilde = beta * (1 - prev) / (1 - ac)
  beta_tilde[0] = beta_tilde[1]
  return jnp.asarray(np.log(beta_tilde), jnp.float32)[t], jnp.asarray(np.log(beta), jnp.float32)[t]


def step_log_variance_bounds(a_t, a_prev):
  """(log beta~, log beta) of consecutive sampler steps, a_t and a_prev [n] the cumulative alphas at each step's
  timestep and the next one (1 after the last): beta = 1 - a_t / a_prev, so respaced steps get the respaced
  betas; beta~ of the last step (0) takes the step before's value."""
  beta = 1 - a_t / a_prev
  beta_tilde = beta * (1 - a_prev) / (1 - a_t)
  beta_tilde = beta_tilde.at[-1].set(beta_tilde[-2] if len(beta) > 1 else beta[-1])
  return jnp.log(beta_tilde), jnp.log(beta)


def interpolated_log_variance(values, min_log, max_log):
  """frac * max_log + (1 - frac) * min_log with frac = (values + 1) / 2."""
  frac = (values + 1) / 2
  return frac * max_log + (1 - frac) * min_log


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _standard_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log P(x) for x in [-1, 1] on a grid of 256 values (bins of width 2/255; the end bins reach +-inf) under
  N(mean, exp(log_scale)^2), elementwise (the Gaussian CDF approximated as in Improved DDPM)."""
  centred = x - mean
  inv_std = jnp.exp(-log_scale)
  cdf_plus = _standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
  cdf_min = _standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_per_example(objective, prediction, values, x0, x_t, t, alphas_cumprod):
  """L_vlb term of each example in bits per dimension: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0,
  -log p(x_0 | x_1) (discretised decoder) at t = 0. The mean of p comes from `prediction` (stop its gradient
  for the hybrid loss) through the x_0 it implies; its log variance from `values`."""
  ac = jnp.asarray(alphas_cumprod, jnp.float32)
  a_t = broadcast_to(ac[t], x_t)
  a_prev = broadcast_to(jnp.where(t > 0, ac[jnp.maximum(t - 1, 0)], 1.0), x_t)
  beta = 1 - a_t / a_prev
  coef_x0, coef_xt = jnp.sqrt(a_prev) * beta / (1 - a_t), jnp.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
  min_log, max_log = (broadcast_to(v, x_t) for v in posterior_log_variance_bounds(alphas_cumprod, t))
  true_mean = coef_x0 * x0 + coef_xt * x_t
  x0_pred, _ = predict_x0_eps(objective, prediction, x_t, jnp.sqrt(a_t), jnp.sqrt(1 - a_t))
  model_mean = coef_x0 * x0_pred + coef_xt * x_t
  model_log_var = interpolated_log_variance(values, min_log, max_log)
  axes = tuple(range(1, x_t.ndim))
  kl = jnp.mean(normal_kl(true_mean, min_log, model_mean, model_log_var), axis=axes) / math.log(2.0)
  nll = -jnp.mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var), axis=axes) / math.log(2.0)
  return jnp.where(t == 0, nll, kl)


def hybrid_loss_per_example(objective, output, target, x0, x_t, t, alphas_cumprod, mse_weight=1.0):
  """(mse_weight L_simple + L_vlb * T / 1000, L_vlb) per example for a 2C-channel output: the MSE of the
  prediction channels (weighted per example, diffusion/objectives.loss_weight), plus the bound with the
  prediction's gradient stopped (it trains the variance channels)."""
  prediction, values = split_output(output.astype(jnp.float32))
  mse = jnp.mean(jnp.square(prediction - target), axis=tuple(range(1, output.ndim)))
  vlb = vlb_per_example(objective, jax.lax.stop_gradient(prediction), values, x0, x_t, t, alphas_cumprod)
  return mse_weight * mse + vlb * (len(alphas_cumprod) / 1000.0), vlb
