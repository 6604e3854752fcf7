"""DPM-Solver++(2M) (Lu et al., 2022): a second-order multistep solver of the diffusion ODE in x_0 form.

With lambda = log(alpha / sigma) (alpha = 1 / sqrt(1 + s^2), sigma = s alpha for the VE level s),
one step from level i to i + 1 over h = lambda_{i+1} - lambda_i is

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h) - 1) D_i,

D_0 = x0_0 (first order) and D_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i), r_i = h_{i-1} / h_i, after it
(the "midpoint" form of diffusers' DPMSolverMultistepScheduler). The last step goes to the noise
level of t = 0 and stays second order (diffusers' final_sigmas_type='sigma_min', lower_order_final=False).
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import denoise
from diffusion.schedules import sigma_at_timestep, sigmas_from_alphas_cumprod, timestep_spacing


def dpm_solver_timesteps(num_timesteps, num_steps, spacing='linspace'):
  """The num_steps decreasing timesteps at which the network is called; the solver ends at t = 0.

  linspace, leading: num_steps + 1 evenly spaced points from 0 with the 0 dropped (diffusers' DPM
  convention; linspace at 10 steps gives 999, 899, ..., 500, 400, ..., 100); trailing: T - 1 down to T / num_steps - 1.
  """
  if spacing == 'trailing':
    return timestep_spacing(num_timesteps, num_steps, 'trailing')
  if not 0 < num_steps < num_timesteps:
    raise ValueError(f'number of DPM-Solver steps {num_steps} must be in [1, {num_timesteps - 1}]')
  return timestep_spacing(num_timesteps, num_steps + 1, spacing)[:-1]


def dpm_solver_2m_coefficients(alphas_cumprod, timesteps):
  """Per-step constants (float32 device arrays) computed in float64: the noise levels (alpha, sigma) at
  each timestep, the ratio sigma_{i+1} / sigma_i, -alpha_{i+1} (exp(-h_i) - 1) and 1 / (2 r_i)."""
  ve = sigma_at_timestep(alphas_cumprod, np.asarray(timesteps, np.float64))
  ve = np.concatenate([ve, sigmas_from_alphas_cumprod(alphas_cumprod)[:1]])  # ends at t = 0's level
  alpha = 1 / np.sqrt(ve ** 2 + 1)
  sigma = ve * alpha
  lam = np.log(alpha / sigma)
  h = np.diff(lam)
  r = np.concatenate([[1.0], h[:-1] / h[1:]])  # r_0 is unused: the first step is first order
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return dict(alpha=f32(alpha[:-1]), sigma=f32(sigma[:-1]), sigma_ratio=f32(sigma[1:] / sigma[:-1]),
              x0_coef=f32(-alpha[1:] * np.expm1(-h)), half_inv_r=f32(0.5 / r))


def dpm_solver_2m_sample(model_fn, x, alphas_cumprod, timesteps, objective='eps', clip_denoised=False):
  """Runs DPM-Solver++(2M) from noise x (the VP x_T) over `timesteps`; returns x at the level of t = 0."""
  c = dpm_solver_2m_coefficients(alphas_cumprod, timesteps)
  ts = jnp.asarray(timesteps, jnp.float32)

  def step(i, carry):
    x, previous_x0 = carry
    x0, _ = denoise(model_fn, objective, x, ts[i], c['alpha'][i], c['sigma'][i], clip_denoised)
    d = jnp.where(i == 0, x0, x0 + c['half_inv_r'][i] * (x0 - previous_x0))
    return c['sigma_ratio'][i] * x + c['x0_coef'][i] * d, x0

  x, _ = jax.lax.fori_loop(0, len(timesteps), step, (x, jnp.zeros_like(x)))
  return x
