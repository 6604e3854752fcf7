"""Editing with a trained model: img2img (SDEdit) and inpainting (RePaint without resampling).

Both run the DDIM or DDPM step of diffusion/samplers.py (`ddim_step`, `ddpm_step`: started from the same x and
timesteps, `edit_loop` without a mask returns what `ddim_sample`/`ddpm_sample` return) over the sampler's
timesteps, seeing only `model_fn(x, t)` as sampling does (guidance and preconditioning folded in, jobs/guided.py),
with classifier guidance and learned variances as in sampling.

- img2img, strength s in [0, 1]: keep the last round(s * num_steps) of the sampler's timesteps, noise the
  input to the first of them, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, and sample from there (diffusers'
  convention). s = 0 returns the input unchanged; s = 1 starts from (almost) pure noise.
- inpainting, mask (True / 1 = known pixel, broadcast against x): before every network call the known
  region is replaced by the forward-noised original at that step's noise level, and after the last step
  by the original itself, so the known region of the result is the input exactly. RePaint's resampling
  jumps are left out (hence "lite"); harmonisation then relies on the model alone.

DPM-Solver++(2M) can be used for img2img (truncated timesteps); Karras and flow samplers are not
supported here. For latent models, edit latents: encode the image with models.vae.encode_to_latents
(and downsample the mask by the VAE factor), decode the result with input_pipeline.latents.
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.classifier_guidance import score_guided
from diffusion.dpm_solver import dpm_solver_2m_sample, dpm_solver_timesteps
from diffusion.learned_variance import step_log_variance_bounds
from diffusion.samplers import ddim_step, ddpm_step, prediction_only, schedule_pairs
from diffusion.schedules import timestep_spacing

EDIT_SAMPLERS = ('ddim', 'ddpm')


def forward_noise(x0, a, noise):
  """x_t = sqrt(a) x0 + sqrt(1 - a) noise (exactly x0 at a = 1)."""
  return jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise


def edit_timesteps(timesteps, strength):
  """The last round(strength * len(timesteps)) of a sampler's decreasing timesteps."""
  if not 0 <= strength <= 1:
    raise ValueError(f'strength {strength} must be in [0, 1]')
  keep = int(round(strength * len(timesteps)))
  return np.asarray(timesteps)[len(timesteps) - keep:]


def edit_loop(model_fn, x, alphas_cumprod, timesteps, sampler='ddim', objective='eps', rng=None, eta=0.0,
              variance='posterior', clip_denoised=True, known=None, mask=None, classifier_gradient=None):
  """DDIM/DDPM steps from x at timesteps[0]; with `known` and `mask`, the known region is pinned to the
  forward-noised `known` before each step and to `known` itself at the end. variance 'learned': model_fn also
  outputs Improved DDPM's variance values (DDPM only)."""
  if sampler not in EDIT_SAMPLERS:
    raise ValueError(f'editing supports the samplers {EDIT_SAMPLERS}, not {sampler!r}')
  ts, a_ts, a_prevs = schedule_pairs(alphas_cumprod, timesteps)
  min_logs, max_logs = step_log_variance_bounds(a_ts, a_prevs)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  known_rng = jax.random.fold_in(rng, 2_000_003)
  n = len(timesteps)
  pinned = None if mask is None else jnp.broadcast_to(jnp.asarray(mask) > 0.5, x.shape)

  def pin(x, a, i):
    if pinned is None:
      return x
    noise = jax.random.normal(jax.random.fold_in(known_rng, i), x.shape, x.dtype)
    return jnp.where(pinned, forward_noise(known, a, noise), x)

  def step(i, x):
    x = pin(x, a_ts[i], i)
    if sampler == 'ddim':
      return ddim_step(model_fn, objective, x, i, ts[i], a_ts[i], a_prevs[i], rng, eta, clip_denoised,
                       classifier_gradient)
    return ddpm_step(model_fn, objective, x, i, ts[i], a_ts[i], a_prevs[i], rng, i == n - 1, variance, clip_denoised,
                     classifier_gradient, (min_logs[i], max_logs[i]))

  x = jax.lax.fori_loop(0, n, step, x)
  return x if pinned is None else jnp.where(pinned, known, x)


def check_edit_sampler(name, inpainting, spacing='leading'):
  """Raises unless `name` can edit: DDIM and DDPM, and for img2img (no mask) DPM-Solver++ 2M too, on timesteps."""
  supported = EDIT_SAMPLERS + (() if inpainting else ('dpm++2m',))
  if name not in supported:
    raise ValueError(f'config.sample.sampler={name!r}: {"inpainting" if inpainting else "img2img"} supports '
                     f'{", ".join(supported)}; pass e.g. --config.sample.sampler=ddim')
  if spacing == 'karras':
    raise ValueError("config.sample.spacing='karras': editing starts at an integer timestep of a leading, trailing "
                     "or linspace spacing; pass e.g. --config.sample.spacing=linspace")


def edit(sample_config, objective, alphas_cumprod, model_fn, x0, rng, strength=1.0, mask=None, learn_sigma=False,
         classifier_gradient=None):
  """img2img (mask None, strength < 1) or inpainting (mask given) with config.sample's sampler, steps,
  spacing, eta, DDPM variance and clipping. x0 is in the model's data space ([-1, 1] pixels or latents).
  learn_sigma: model_fn also outputs variance values, which DDPM samples with (as sampling does) and the others
  drop; classifier_gradient(x_t, t): classifier guidance, as in sampling."""
  name = sample_config.sampler
  check_edit_sampler(name, inpainting=mask is not None, spacing=sample_config.spacing)
  num_timesteps = len(alphas_cumprod)
  if name == 'dpm++2m':
    timesteps = edit_timesteps(dpm_solver_timesteps(num_timesteps, sample_config.num_steps, sample_config.spacing),
                               strength)
  else:
    timesteps = edit_timesteps(timestep_spacing(num_timesteps, sample_config.num_steps, sample_config.spacing),
                               strength)
  x0 = jnp.asarray(x0, jnp.float32)
  if len(timesteps) == 0:
    return x0
  start_rng, loop_rng = jax.random.split(rng)
  a_start = jnp.asarray(np.asarray(alphas_cumprod, np.float32)[timesteps[0]])
  x = forward_noise(x0, a_start, jax.random.normal(start_rng, x0.shape, jnp.float32))
  variance = 'learned' if learn_sigma and name == 'ddpm' else sample_config.ddpm_variance
  if learn_sigma and name != 'ddpm':
    model_fn = prediction_only(model_fn)
  if name == 'dpm++2m':
    if classifier_gradient is not None:
      model_fn, objective = score_guided(model_fn, objective, alphas_cumprod, classifier_gradient)
    return dpm_solver_2m_sample(model_fn, x, alphas_cumprod, timesteps, objective, sample_config.clip_denoised)
  return edit_loop(model_fn, x, alphas_cumprod, timesteps, name, objective, loop_rng, sample_config.eta, variance,
                   sample_config.clip_denoised, known=None if mask is None else x0, mask=mask,
                   classifier_gradient=classifier_gradient)


def img2img(sample_config, objective, alphas_cumprod, model_fn, x0, rng, strength, **kwargs):
  return edit(sample_config, objective, alphas_cumprod, model_fn, x0, rng, strength=strength, **kwargs)


def inpaint(sample_config, objective, alphas_cumprod, model_fn, x0, mask, rng, strength=1.0, **kwargs):
  return edit(sample_config, objective, alphas_cumprod, model_fn, x0, rng, strength=strength, mask=mask, **kwargs)
