"""Noise schedules of discrete-time variance-preserving diffusion.

Everything derives from alphas_cumprod (written a_t): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps.
"""
import math

import jax.numpy as jnp
import numpy as np


def linear_betas(num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
  """DDPM's betas, linspace(beta_start, beta_end) in float32 as the reference implementations have it."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float32)


def cosine_betas(num_timesteps=1000, s=0.008, max_beta=0.999):
  """Improved DDPM (Nichol & Dhariwal, 2021): a_t = cos^2((t/T + s) / (1 + s) * pi/2), betas clipped."""
  f = lambda t: math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2)**2
  betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
  return np.asarray(betas, dtype=np.float64)


def alphas_cumprod_from_betas(betas):
  return np.cumprod(1.0 - np.asarray(betas, np.float64)).astype(np.float32)


def linear_alphas_cumprod(num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
  return alphas_cumprod_from_betas(linear_betas(num_timesteps, beta_start, beta_end))


def cosine_alphas_cumprod(num_timesteps=1000):
  return alphas_cumprod_from_betas(cosine_betas(num_timesteps))


def alphas_cumprod_for(config):
  """The schedule `config.diffusion` names, as a float32 numpy array of length num_timesteps."""
  d = config.diffusion
  if d.schedule == 'linear':
    return linear_alphas_cumprod(d.num_timesteps, d.beta_start, d.beta_end)
  if d.schedule == 'cosine':
    return cosine_alphas_cumprod(d.num_timesteps)
  raise ValueError(f'config.diffusion.schedule={d.schedule!r} is not one of linear, cosine')


def sigmas_from_alphas_cumprod(alphas_cumprod):
  """The equivalent variance-exploding noise levels sigma_t = sqrt((1 - a_t) / a_t)."""
  a = np.asarray(alphas_cumprod, np.float64)
  return np.sqrt((1 - a) / a)


def timestep_spacing(num_timesteps, num_steps, spacing='leading'):
  """Decreasing integer timesteps for a num_steps sampler (the conventions of diffusers' schedulers).

  leading: 0, k, 2k, ... with k = T // steps (DDIM paper); trailing: T-1, T-1-k', ... with
  k' = T / steps rounded; linspace: round(linspace(0, T-1, steps)).
  """
  if not 0 < num_steps <= num_timesteps:
    raise ValueError(f'number of sampling steps {num_steps} must be in [1, {num_timesteps}]')
  if spacing == 'leading':
    steps = np.arange(num_steps) * (num_timesteps // num_steps)
  elif spacing == 'trailing':
    # arange with a float step can give one element more (about 1e-13, rounded to 0: a timestep of -1), e.g. for
    # 61 of 1000 steps; keep the first num_steps (diffusers' DDIMScheduler has the extra step)
    steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)[:num_steps]).astype(np.int64)[::-1] - 1
  elif spacing == 'linspace':
    steps = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64)
  else:
    raise ValueError(f'timestep spacing {spacing!r} is not one of leading, trailing, linspace')
  return steps[::-1].astype(np.int32).copy()


def sigma_at_timestep(alphas_cumprod, t):
  """VE noise level at (fractional) timesteps t: log-sigma interpolated linearly between integer
  timesteps, as k-diffusion's DiscreteSchedule does; exact at integer t. numpy t gives float64 numpy
  (for constants computed before tracing), a jax array (traced or not) gives float32 jax."""
  log_sigmas = np.log(sigmas_from_alphas_cumprod(alphas_cumprod))
  grid = np.arange(len(log_sigmas), dtype=np.float64)
  if isinstance(t, (np.ndarray, np.number, int, float)):
    return np.exp(np.interp(t, grid, log_sigmas))
  return jnp.exp(jnp.interp(t, jnp.asarray(grid, jnp.float32), jnp.asarray(log_sigmas, jnp.float32)))


def timestep_at_sigma(alphas_cumprod, sigma):
  """The inverse of sigma_at_timestep: fractional timesteps (numpy float64) of VE noise levels,
  clamped to [0, T - 1] for sigmas outside the schedule's range."""
  log_sigmas = np.log(sigmas_from_alphas_cumprod(alphas_cumprod))
  return np.interp(np.log(np.asarray(sigma, np.float64)), log_sigmas, np.arange(len(log_sigmas), dtype=np.float64))
