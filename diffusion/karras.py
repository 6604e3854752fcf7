"""Euler and Heun samplers on the Karras et al. (2022, "EDM") noise levels, for a discrete VP model.

The loop works in the VE parameterisation x = x_t * sqrt(1 + sigma^2) = x_0 + sigma eps and
integrates the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM Algorithm 1), or with
S_churn > 0 EDM Algorithm 2, which adds noise before each step and steps from the raised level. The VP
network is called at the fractional timestep of sigma (log-sigma interpolation, as k-diffusion) on
x / sqrt(1 + sigma^2); its output is read as an x_0 estimate D.
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import denoise
from diffusion.schedules import sigmas_from_alphas_cumprod, timestep_at_sigma


def karras_sigmas(num_steps, sigma_min, sigma_max, rho=7.0):
  """EDM's num_steps noise levels (sigma_max^(1/rho) -> sigma_min^(1/rho) linearly, to the power rho),
  followed by 0: num_steps + 1 levels in float64."""
  ramp = np.linspace(0, 1, num_steps) if num_steps > 1 else np.zeros(1)
  inv_rho_min, inv_rho_max = sigma_min**(1 / rho), sigma_max**(1 / rho)
  sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max))**rho
  return np.concatenate([sigmas, [0.0]])


def schedule_karras_sigmas(alphas_cumprod, num_steps, rho=7.0, sigma_max=None):
  """karras_sigmas from sigma_max (default: the schedule's largest, sigma(t=T-1)) down to sigma(t=0).

  A cosine schedule's largest sigma is about 2e4, where few-step samplers waste their first steps; EDM
  starts at 80. sigma_max above the schedule's largest would ask the network for noise levels it never saw.
  """
  sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
  if sigma_max is None:
    sigma_max = sigmas[-1]
  if not sigmas[0] < sigma_max <= sigmas[-1] * (1 + 1e-6):
    raise ValueError(f'config.sample.karras_sigma_max={sigma_max:g} must lie in the schedule\'s noise levels '
                     f'({sigmas[0]:.4g}, {sigmas[-1]:.6g}]; 0 uses the largest')
  return karras_sigmas(num_steps, sigmas[0], min(sigma_max, sigmas[-1]), rho)


def churned_levels(sigmas, s_churn, s_tmin=0.0, s_tmax=float('inf'), sigma_cap=float('inf')):
  """EDM Algorithm 2's raised noise levels sigma_hat_i = sigma_i (1 + gamma_i) for the N = len(sigmas) - 1 steps:
  gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax, else 0. sigma_hat is capped at
  sigma_cap (the schedule's largest level: the network never saw more noise). float64."""
  levels = np.asarray(sigmas[:-1], np.float64)
  gamma = np.where((levels >= s_tmin) & (levels <= s_tmax), min(s_churn / len(levels), np.sqrt(2) - 1), 0.0)
  return np.minimum(levels * (1 + gamma), np.maximum(sigma_cap, levels))


def karras_sample(model_fn, noise, alphas_cumprod, num_steps, objective='eps', rho=7.0, order=2, clip_denoised=False,
                  sigma_max=None, s_churn=0.0, s_tmin=0.0, s_tmax=float('inf'), s_noise=1.0, rng=None):
  """EDM's sampler from noise (a VP x_T ~ N(0, I), read as x at sigma_max: its signal, of variance
  1 / (1 + sigma_max^2), is dropped); returns the x_0 estimate.

  order=2 is Heun's method on every step but the last (2 num_steps - 1 network calls); order=1 is
  Euler (num_steps calls). The last step, to sigma = 0, is an Euler step, which lands on D.
  s_churn > 0 is EDM Algorithm 2 (stochastic): each step first raises the noise from sigma_i to sigma_hat_i
  (churned_levels) with fresh noise of std s_noise sqrt(sigma_hat^2 - sigma_i^2) drawn from fold_in(rng, i), then
  steps from sigma_hat_i. s_churn = 0 is Algorithm 1 (deterministic; rng unused).
  """
  if order not in (1, 2):
    raise ValueError(f'order must be 1 (Euler) or 2 (Heun), got {order}')
  sigmas_np = schedule_karras_sigmas(alphas_cumprod, num_steps, rho, sigma_max)
  churn = s_churn > 0
  hats_np = (churned_levels(sigmas_np, s_churn, s_tmin, s_tmax,
                            sigmas_from_alphas_cumprod(alphas_cumprod)[-1]) if churn else sigmas_np[:-1])
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  sigmas, timesteps = f32(sigmas_np), f32(timestep_at_sigma(alphas_cumprod, sigmas_np[:-1]))
  hats, hat_timesteps = f32(hats_np), f32(timestep_at_sigma(alphas_cumprod, hats_np))
  churn_std = f32(s_noise * np.sqrt(hats_np**2 - sigmas_np[:-1]**2))
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def denoised(x, sigma, t):
    """D(x; sigma): the network sees the VP input x / sqrt(1 + sigma^2) at timestep t."""
    scale = 1 / jnp.sqrt(1 + sigma**2)
    x0, _ = denoise(model_fn, objective, x * scale, t, scale, sigma * scale, clip_denoised)
    return x0

  def raise_noise(x, i):
    if not churn:
      return x
    return x + churn_std[i] * jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)

  def step(i, x):
    x = raise_noise(x, i)
    sigma, sigma_next = hats[i], sigmas[i + 1]
    slope = (x - denoised(x, sigma, hat_timesteps[i])) / sigma
    x_next = x + (sigma_next - sigma) * slope
    if order == 2:
      slope_next = (x_next - denoised(x_next, sigma_next, timesteps[i + 1])) / sigma_next
      x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
    return x_next

  x = noise * jnp.sqrt(1 + sigmas[0]**2)
  x = jax.lax.fori_loop(0, num_steps - 1, step, x)
  x = raise_noise(x, num_steps - 1)
  return denoised(x, hats[num_steps - 1], hat_timesteps[num_steps - 1])
