"""DPM-Solver++(2M) (Lu et al., 2022): a second-order multistep solver of the diffusion ODE in x_0 form.

With lambda = log(alpha / sigma) (alpha = 1 / sqrt(1 + s^2), sigma = s alpha for the VE level s),
one step from level i to i + 1 over h = lambda_{i+1} - lambda_i is

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h) - 1) D_i,

D_0 = x0_0 (first order) and D_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i), r_i = h_{i-1} / h_i, after it
(the "midpoint" form of diffusers' DPMSolverMultistepScheduler). The last step goes to the noise
level of t = 0 and stays second order (diffusers' final_sigmas_type='sigma_min', lower_order_final=False).
On Karras noise levels (sample.spacing='karras', "DPM++ 2M Karras") the last step goes to 0 and is first order
(k-diffusion's sample_dpmpp_2m; diffusers' use_karras_sigmas=True with final_sigmas_type='zero').
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.karras import schedule_karras_sigmas
from diffusion.objectives import denoise
from diffusion.schedules import sigma_at_timestep, sigmas_from_alphas_cumprod, timestep_at_sigma, timestep_spacing


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


def dpm_solver_2m_coefficients(levels):
  """Per-step constants (float32 device arrays) computed in float64 from the N + 1 decreasing VE noise levels
  (the N at which the network is called, then the one the solver ends at, which may be 0): the noise levels
  (alpha, sigma) of the calls, the ratio sigma_{i+1} / sigma_i, -alpha_{i+1} (exp(-h_i) - 1) and 1 / (2 r_i).
  1 / (2 r_i) is 0 on the first-order steps: the first, and a last step to level 0 (where h is infinite)."""
  levels = np.asarray(levels, np.float64)
  alpha = 1 / np.sqrt(levels**2 + 1)
  sigma = levels * alpha
  with np.errstate(divide='ignore'):
    lam = np.log(alpha) - np.log(sigma)  # +inf at level 0
  h = np.diff(lam)
  half_inv_r = np.zeros_like(h)
  second_order = np.isfinite(h) & (np.arange(len(h)) > 0)
  half_inv_r[second_order] = 0.5 * h[second_order] / h[np.flatnonzero(second_order) - 1]
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return dict(alpha=f32(alpha[:-1]), sigma=f32(sigma[:-1]), sigma_ratio=f32(sigma[1:] / sigma[:-1]),
              x0_coef=f32(-alpha[1:] * np.expm1(-h)), half_inv_r=f32(half_inv_r))


def dpm_solver_karras(alphas_cumprod, num_steps, rho=7.0, sigma_max=None):
  """("DPM++ 2M Karras") the num_steps Karras noise levels of karras.schedule_karras_sigmas followed by 0, and the
  fractional network timesteps of the first num_steps (log-sigma interpolation, as k-diffusion; diffusers rounds
  them to integers): (timesteps, levels) for dpm_solver_2m_sample."""
  levels = schedule_karras_sigmas(alphas_cumprod, num_steps, rho, sigma_max)
  return timestep_at_sigma(alphas_cumprod, levels[:-1]), levels


def dpm_solver_2m_sample(model_fn, x, alphas_cumprod, timesteps, objective='eps', clip_denoised=False, levels=None):
  """Runs DPM-Solver++(2M) from noise x (the VP x_T), calling the network at `timesteps` (may be fractional).

  levels: their VE noise levels and the one to end at (len(timesteps) + 1); by default the levels of the
  timesteps and then of t = 0, whose x is returned. Levels ending at 0 (dpm_solver_karras) return the last
  x_0 estimate, reached by a first-order step."""
  if levels is None:
    levels = np.concatenate([
        sigma_at_timestep(alphas_cumprod, np.asarray(timesteps, np.float64)),
        sigmas_from_alphas_cumprod(alphas_cumprod)[:1]
    ])
  if len(levels) != len(timesteps) + 1:
    raise ValueError(f'{len(timesteps)} timesteps need {len(timesteps) + 1} noise levels, got {len(levels)}')
  c = dpm_solver_2m_coefficients(levels)
  ts = jnp.asarray(timesteps, jnp.float32)

  def step(i, carry):
    x, previous_x0 = carry
    x0, _ = denoise(model_fn, objective, x, ts[i], c['alpha'][i], c['sigma'][i], clip_denoised)
    d = x0 + c['half_inv_r'][i] * (x0 - previous_x0)
    return c['sigma_ratio'][i] * x + c['x0_coef'][i] * d, x0

  x, _ = jax.lax.fori_loop(0, len(timesteps), step, (x, jnp.zeros_like(x)))
  return x
