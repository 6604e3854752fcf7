"""Samplers for discrete-time VP diffusion and flow matching, and `run_sampler`, which picks one.

A sampler sees only `model_fn(x, t) -> network output` (t a [B] float array of network times,
guidance already folded in), the schedule and the objective that says how to read the output.
Each is one `jax.lax` loop: DDPM and DDIM here, DPM-Solver++(2M) in dpm_solver.py, Euler/Heun on
Karras noise levels in karras.py, Euler/Heun for flow matching in flow_samplers.py, SiT's ODE and SDE samplers
for transports in transport_samplers.py.
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.classifier_guidance import score_guided
from diffusion.dpm_solver import dpm_solver_2m_sample, dpm_solver_karras, dpm_solver_timesteps
from diffusion.flow_samplers import flow_sample
from diffusion.karras import karras_sample
from diffusion.learned_variance import interpolated_log_variance, split_output, step_log_variance_bounds
from diffusion.objectives import denoise, read_output
from diffusion.schedules import timestep_spacing
from diffusion.transport_samplers import transport_sample


def _read_output(objective, model_fn, x, t, a_t, clip_denoised):
  """Network output at integer time t -> (x0, eps), with x0 optionally clipped and eps recomputed."""
  return denoise(model_fn, objective, x, t, jnp.sqrt(a_t), jnp.sqrt(1 - a_t), clip_denoised)


def schedule_pairs(alphas_cumprod, timesteps):
  """Device arrays (t, a_t, a_prev) for decreasing timesteps; the step after the last has a_prev = 1."""
  ac = np.asarray(alphas_cumprod, np.float32)
  timesteps = np.asarray(timesteps)
  a_t = ac[timesteps]
  a_prev = np.concatenate([ac[timesteps[1:]], np.ones(1, np.float32)])
  return jnp.asarray(timesteps, jnp.int32), jnp.asarray(a_t), jnp.asarray(a_prev)


def ddim_step(model_fn, objective, x, i, t, a_t, a_prev, rng, eta=0.0, clip_denoised=True, classifier_gradient=None):
  """One DDIM update from x at integer time t (cumulative alpha a_t) to the time of a_prev; the noise of step i is
  drawn from fold_in(rng, i). classifier_gradient(x_t, t) -> scale * d log p(y | x_t) / d x_t moves eps by
  -sqrt(1 - a_t) times it, after clipping (guided-diffusion's condition_score; diffusion/classifier_guidance.py)."""
  x0, eps = _read_output(objective, model_fn, x, t, a_t, clip_denoised)
  if classifier_gradient is not None:
    eps = eps - jnp.sqrt(1 - a_t) * classifier_gradient(x, jnp.full((x.shape[0],), t, jnp.float32))
    x0 = (x - jnp.sqrt(1 - a_t) * eps) / jnp.sqrt(a_t)
  sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a_t)) * jnp.sqrt(1 - a_t / a_prev)
  noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
  return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise


def ddpm_step(model_fn, objective, x, i, t, a_t, a_prev, rng, last, variance='posterior', clip_denoised=True,
              classifier_gradient=None, log_variance_bounds=None):
  """One ancestral update from x at integer time t to the time of a_prev, without noise on the `last` step.

  variance: 'posterior' beta~_t = beta_t (1 - a_prev) / (1 - a_t), 'beta' beta_t, 'learned' model_fn's 2C-channel
  output read as prediction and Improved DDPM's variance values between log_variance_bounds (min, max).
  classifier_gradient moves the mean by the step's variance times it (guided-diffusion's condition_mean)."""
  beta = 1 - a_t / a_prev
  if variance == 'learned':
    prediction, values = split_output(model_fn(x, jnp.full((x.shape[0],), t, jnp.float32)))
    x0, _ = read_output(objective, prediction, x, jnp.sqrt(a_t), jnp.sqrt(1 - a_t), clip_denoised)
    var = jnp.exp(interpolated_log_variance(values, *log_variance_bounds))
  else:
    x0, _ = _read_output(objective, model_fn, x, t, a_t, clip_denoised)
    var = beta * (1 - a_prev) / (1 - a_t) if variance == 'posterior' else beta
  mean = (jnp.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (jnp.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
  if classifier_gradient is not None:
    mean = mean + var * classifier_gradient(x, jnp.full((x.shape[0],), t, jnp.float32))
  var = jnp.where(last, 0.0, var)
  noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
  return mean + jnp.sqrt(var) * noise


def ddim_sample(model_fn, x, alphas_cumprod, timesteps, objective='eps', eta=0.0, rng=None, clip_denoised=True,
                classifier_gradient=None):
  """DDIM (Song et al., 2021). eta=0 is deterministic; eta=1 matches DDPM's posterior variance."""
  ts, a_ts, a_prevs = schedule_pairs(alphas_cumprod, timesteps)
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def step(i, x):
    return ddim_step(model_fn, objective, x, i, ts[i], a_ts[i], a_prevs[i], rng, eta, clip_denoised,
                     classifier_gradient)

  return jax.lax.fori_loop(0, len(timesteps), step, x)


def ddpm_sample(model_fn, x, alphas_cumprod, timesteps, objective='eps', rng=None, variance='posterior',
                clip_denoised=True, classifier_gradient=None):
  """Ancestral sampling (Ho et al., 2020) over `timesteps`, respaced as in improved DDPM (`ddpm_step`); 'learned'
  variances interpolate between the logs of the respaced steps' bounds (learned_variance.py)."""
  if variance not in ('posterior', 'beta', 'learned'):
    raise ValueError(f"DDPM variance {variance!r} is not one of 'posterior', 'beta', 'learned'")
  ts, a_ts, a_prevs = schedule_pairs(alphas_cumprod, timesteps)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  n = len(timesteps)
  min_logs, max_logs = step_log_variance_bounds(a_ts, a_prevs)

  def step(i, x):
    return ddpm_step(model_fn, objective, x, i, ts[i], a_ts[i], a_prevs[i], rng, i == n - 1, variance, clip_denoised,
                     classifier_gradient, (min_logs[i], max_logs[i]))

  return jax.lax.fori_loop(0, n, step, x)


def run_sampler(sample_config, objective, alphas_cumprod, model_fn, noise, rng, learn_sigma=False,
                classifier_gradient=None, transport=None):
  """Runs the sampler `sample_config.sampler` from initial noise; returns x_0 estimates.

  VP objectives (eps, x0, v): 'ddpm', 'ddim', 'dpm++2m' on `sample_config.spacing` timesteps ('dpm++2m' also
  on Karras noise levels, spacing 'karras'); 'heun' and 'euler' on Karras noise levels (rho =
  sample_config.karras_rho, from karras_sigma_max or the schedule's largest sigma), stochastic (EDM Algorithm 2)
  with sample_config.s_churn > 0. Objective 'flow':
  'euler' and 'heun' on uniform flow times, shifted by sample_config.flow_shift. Objective 'transport' (`transport`,
  a diffusion.transport.Transport): 'ode_euler', 'ode_heun', 'ode_dopri5', 'sde_euler', 'sde_heun'.
  An EDM-preconditioned network is handed in as its denoiser (objectives.edm_denoiser) with objective 'x0'.
  learn_sigma: model_fn outputs prediction and variance values (learned_variance.py); 'ddpm' samples with
  the learned variance, the other samplers read the prediction only.
  classifier_gradient(x_t, t): classifier guidance (diffusion/classifier_guidance.py), in 'ddpm' and 'ddim' as
  guided-diffusion applies it, in the others on the noise prediction.
  """
  name, num_steps = sample_config.sampler, sample_config.num_steps
  if learn_sigma and name == 'ddpm':
    timesteps = timestep_spacing(len(alphas_cumprod), num_steps, sample_config.spacing)
    return ddpm_sample(model_fn, noise, alphas_cumprod, timesteps, objective, rng, 'learned',
                       sample_config.clip_denoised, classifier_gradient)
  if learn_sigma:
    model_fn = prediction_only(model_fn)
  clip = sample_config.clip_denoised
  if objective == 'transport':
    if classifier_gradient is not None:
      raise ValueError("classifier guidance needs a VP objective (eps, x0, v), not 'transport'")
    return transport_sample(transport, sample_config, model_fn, noise, rng)
  if objective == 'flow':
    if name not in ('euler', 'heun'):
      raise ValueError(f"sampler {name!r} does not apply to objective 'flow'; choose 'euler' or 'heun'")
    if classifier_gradient is not None:
      raise ValueError("classifier guidance needs a VP objective (eps, x0, v), not 'flow'")
    return flow_sample(model_fn, noise, num_steps, order=1 if name == 'euler' else 2,
                       shift=sample_config.get('flow_shift', 1.0))
  num_timesteps = len(alphas_cumprod)
  if name == 'ddim':
    timesteps = timestep_spacing(num_timesteps, num_steps, sample_config.spacing)
    return ddim_sample(model_fn, noise, alphas_cumprod, timesteps, objective, sample_config.eta, rng, clip,
                       classifier_gradient)
  if name == 'ddpm':
    timesteps = timestep_spacing(num_timesteps, num_steps, sample_config.spacing)
    return ddpm_sample(model_fn, noise, alphas_cumprod, timesteps, objective, rng, sample_config.ddpm_variance, clip,
                       classifier_gradient)
  if classifier_gradient is not None:
    model_fn, objective = score_guided(model_fn, objective, alphas_cumprod, classifier_gradient)
  if name == 'dpm++2m' and sample_config.spacing == 'karras':
    timesteps, levels = dpm_solver_karras(alphas_cumprod, num_steps, sample_config.get('karras_rho', 7.0),
                                          sample_config.get('karras_sigma_max', 0.0) or None)
    return dpm_solver_2m_sample(model_fn, noise, alphas_cumprod, timesteps, objective, clip, levels)
  if name == 'dpm++2m':
    timesteps = dpm_solver_timesteps(num_timesteps, num_steps, sample_config.spacing)
    return dpm_solver_2m_sample(model_fn, noise, alphas_cumprod, timesteps, objective, clip)
  if name in ('heun', 'euler'):
    return karras_sample(model_fn, noise, alphas_cumprod, num_steps, objective,
                         rho=sample_config.get('karras_rho', 7.0), order=2 if name == 'heun' else 1, clip_denoised=clip,
                         sigma_max=sample_config.get('karras_sigma_max', 0.0) or None,
                         s_churn=sample_config.get('s_churn', 0.0), s_tmin=sample_config.get('s_tmin', 0.0),
                         s_tmax=sample_config.get('s_tmax', float('inf')), s_noise=sample_config.get('s_noise',
                                                                                                     1.0), rng=rng)
  raise ValueError(f'config.sample.sampler={name!r} is not available')


def prediction_only(model_fn):
  """model_fn of a learned-variance network, without its variance channels."""
  return lambda x, t: split_output(model_fn(x, t))[0]
