"""Samplers for discrete-time VP diffusion, each one `jax.lax` loop.

A sampler sees only `model_fn(x, t) -> network output` (t a [B] float array of network times,
guidance already folded in), the schedule and the objective that says how to read the output.
`run_sampler` dispatches on `config.sample.sampler`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import predict_x0_eps
from diffusion.schedules import timestep_spacing


def _read_output(objective, model_fn, x, t, a_t, clip_denoised):
  """Network output at integer time t -> (x0, eps), with x0 optionally clipped and eps recomputed."""
  alpha, sigma = jnp.sqrt(a_t), jnp.sqrt(1 - a_t)
  out = model_fn(x, jnp.full((x.shape[0],), t, jnp.float32))
  x0, eps = predict_x0_eps(objective, out, x, alpha, sigma)
  if clip_denoised:
    x0 = jnp.clip(x0, -1, 1)
    eps = (x - alpha * x0) / sigma
  return x0, eps


def _schedule_pairs(alphas_cumprod, timesteps):
  """Device arrays (t, a_t, a_prev) for decreasing timesteps; the step after the last has a_prev = 1."""
  ac = np.asarray(alphas_cumprod, np.float32)
  timesteps = np.asarray(timesteps)
  a_t = ac[timesteps]
  a_prev = np.concatenate([ac[timesteps[1:]], np.ones(1, np.float32)])
  return jnp.asarray(timesteps, jnp.int32), jnp.asarray(a_t), jnp.asarray(a_prev)


def ddim_sample(model_fn, x, alphas_cumprod, timesteps, objective='eps', eta=0.0, rng=None,
                clip_denoised=True):
  """DDIM (Song et al., 2021). eta=0 is deterministic; eta=1 matches DDPM's posterior variance."""
  ts, a_ts, a_prevs = _schedule_pairs(alphas_cumprod, timesteps)
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def step(i, x):
    t, a_t, a_prev = ts[i], a_ts[i], a_prevs[i]
    x0, eps = _read_output(objective, model_fn, x, t, a_t, clip_denoised)
    sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a_t)) * jnp.sqrt(1 - a_t / a_prev)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev - sigma ** 2) * eps + sigma * noise

  return jax.lax.fori_loop(0, len(timesteps), step, x)


def ddpm_sample(model_fn, x, alphas_cumprod, timesteps, objective='eps', rng=None, variance='posterior',
                clip_denoised=True):
  """Ancestral sampling (Ho et al., 2020) over `timesteps`, respaced as in improved DDPM.

  variance: 'posterior' uses beta~_t = beta_t (1 - a_prev) / (1 - a_t), 'beta' uses beta_t; no noise
  is added on the final step.
  """
  ts, a_ts, a_prevs = _schedule_pairs(alphas_cumprod, timesteps)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  n = len(timesteps)

  def step(i, x):
    t, a_t, a_prev = ts[i], a_ts[i], a_prevs[i]
    x0, _ = _read_output(objective, model_fn, x, t, a_t, clip_denoised)
    beta = 1 - a_t / a_prev
    mean = (jnp.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (jnp.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
    var = beta * (1 - a_prev) / (1 - a_t) if variance == 'posterior' else beta
    var = jnp.where(i == n - 1, 0.0, var)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    return mean + jnp.sqrt(var) * noise

  return jax.lax.fori_loop(0, n, step, x)


def run_sampler(sample_config, objective, alphas_cumprod, model_fn, noise, rng):
  """Runs the sampler `sample_config.sampler` from initial noise; returns x_0 estimates."""
  name = sample_config.sampler
  if objective == 'flow':
    raise ValueError(f"sampler {name!r}: flow-matching samplers are not available yet")
  timesteps = timestep_spacing(len(alphas_cumprod), sample_config.num_steps, sample_config.spacing)
  if name == 'ddim':
    return ddim_sample(model_fn, noise, alphas_cumprod, timesteps, objective, sample_config.eta, rng,
                       sample_config.clip_denoised)
  if name == 'ddpm':
    return ddpm_sample(model_fn, noise, alphas_cumprod, timesteps, objective, rng,
                       sample_config.ddpm_variance, sample_config.clip_denoised)
  raise ValueError(f'config.sample.sampler={name!r} is not available')
