"""ODE and SDE samplers of SiT's transports (diffusion/transport.py), each one `jax.lax` loop over model_fn(x, t)
with t = SiT time * FLOW_TIME_SCALE; they integrate forward in SiT time, from noise at t0 to data at t1.

ODE dx/dt = v(x, t), the probability-flow velocity of the prediction (SiT's `sample_ode`):
  'ode_euler', 'ode_heun'  fixed steps over linspace(t0, t1, num_steps): num_steps - 1 steps, as torchdiffeq's
                           'euler' and 'heun2' on SiT's time grid, optionally shifted towards the noise
                           (`shifted_times`, LightningDiT's timestep_shift)
  'ode_dopri5'             Dormand-Prince 5(4) with torchdiffeq's step-size control (RMS error norm over the whole
                           batch against atol + rtol max(|x|, |x_next|), safety 0.9, growth in [0.2, 10], Hairer's
                           first step); steps are cut to land on t1, and a solve that needs more than max_steps
                           steps returns NaN.
SDE dx = [v + w_t s] dt + sqrt(2 w_t) dW with s the score and w_t the diffusion coefficient (SiT's `sample_sde`):
  'sde_euler'  Euler-Maruyama; 'sde_heun'  the noise added first, then a Heun step of the drift;
  num_steps - 1 steps over linspace(t0, t1, num_steps), then the last step from t1 (to 1 when its size is 1 - t1).
  w_t (`diffusion_form`, scaled by norm): 'constant' norm, 'sbdm' norm D_t, 'sigma' norm sigma_t, 'linear'
  norm (1 - t), 'decreasing' (norm cos(pi t) + 1)^2 / 4, 'increasing-decreasing' norm sin^2(pi t).
  Last step (`last_step`, size h): 'none' x; 'mean' x + h (v + w_t s); 'tweedie' (x + sigma_t^2 s) / alpha_t;
  'euler' x + h v.
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import FLOW_TIME_SCALE
from diffusion.transport import (drift_variance, path_coefficients, score_from_output, time_interval,
                                 velocity_from_output)

ODE_SAMPLERS = ('ode_euler', 'ode_heun', 'ode_dopri5')
SDE_SAMPLERS = ('sde_euler', 'sde_heun')
TRANSPORT_SAMPLERS = ODE_SAMPLERS + SDE_SAMPLERS
DIFFUSION_FORMS = ('constant', 'sbdm', 'sigma', 'linear', 'decreasing', 'increasing-decreasing')
LAST_STEPS = ('none', 'mean', 'tweedie', 'euler')

# Dormand-Prince 5(4): nodes, stages, 5th-order weights (also the last stage, FSAL) and 5th minus 4th-order weights.
DOPRI5_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
DOPRI5_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729), (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176,
                                                                      -5103 / 18656))
DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DOPRI5_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def _output(model_fn, x, t):
  """(network output, [B] SiT times) at the scalar SiT time t."""
  t = jnp.full((x.shape[0],), t, jnp.float32)
  return model_fn(x, t * FLOW_TIME_SCALE), t


def ode_velocity(transport, model_fn):
  """v(x, t): the probability-flow velocity at scalar SiT time t."""
  def velocity(x, t):
    output, t = _output(model_fn, x, t)
    return velocity_from_output(transport, output, x, t)

  return velocity


def diffusion_coefficient(transport, form, norm, t):
  """w_t of the SDE at SiT times t (SiT's `compute_diffusion`)."""
  t = jnp.asarray(t, jnp.float32)
  if form == 'constant':
    return norm * jnp.ones_like(t)
  if form == 'sbdm':
    return norm * drift_variance(transport.path, t)
  if form == 'sigma':
    return norm * path_coefficients(transport.path, t)[2]
  if form == 'linear':
    return norm * (1 - t)
  if form == 'decreasing':
    return 0.25 * (norm * jnp.cos(np.pi * t) + 1)**2
  if form == 'increasing-decreasing':
    return norm * jnp.sin(np.pi * t)**2
  raise ValueError(f'unknown diffusion form {form!r}; choose one of {", ".join(DIFFUSION_FORMS)}')


def sde_drift(transport, model_fn, form, norm):
  """(x, t) -> v + w_t s at scalar SiT time t, from one network call."""
  def drift(x, t):
    output, tb = _output(model_fn, x, t)
    score = score_from_output(transport, output, x, tb)
    return velocity_from_output(transport, output, x, tb) + diffusion_coefficient(transport, form, norm, t) * score

  return drift


def sde_step(drift, diffusion, x, t, dt, w, order):
  """One step from time t of size dt with the standard normal draw w: Euler-Maruyama (order 1) or SiT's Heun
  (order 2: noise first, then Heun on the drift)."""
  dw = w * jnp.sqrt(dt)
  if order == 1:
    return x + drift(x, t) * dt + jnp.sqrt(2 * diffusion(t)) * dw
  x_hat = x + jnp.sqrt(2 * diffusion(t)) * dw
  k1 = drift(x_hat, t)
  k2 = drift(x_hat + dt * k1, t + dt)
  return x_hat + 0.5 * dt * (k1 + k2)


def last_step_update(transport, model_fn, x, t, last_step, size, form, norm):
  """SiT's last step from SiT time t (the end of the SDE's grid)."""
  if last_step == 'none':
    return x
  if last_step == 'mean':
    return x + size * sde_drift(transport, model_fn, form, norm)(x, t)
  if last_step == 'euler':
    return x + size * ode_velocity(transport, model_fn)(x, t)
  if last_step == 'tweedie':
    output, tb = _output(model_fn, x, t)
    alpha, _, sigma, _ = path_coefficients(transport.path, jnp.float32(t))
    return x / alpha + sigma**2 / alpha * score_from_output(transport, output, x, tb)
  raise ValueError(f'unknown last step {last_step!r}; choose one of {", ".join(LAST_STEPS)}')


def sde_sample(transport, model_fn, noise, rng, num_steps, order=1, form='sigma', norm=1.0, last_step='mean',
               last_step_size=0.04):
  """SiT's SDE sampler from noise; step i draws its noise from fold_in(rng, i)."""
  size = 0.0 if last_step == 'none' else last_step_size
  t0, t1 = time_interval(transport, sde=True, sbdm=form == 'sbdm', last_step_size=size)
  times = jnp.linspace(t0, t1, num_steps, dtype=jnp.float32)
  dt = times[1] - times[0]
  drift = sde_drift(transport, model_fn, form, norm)
  diffusion = lambda t: diffusion_coefficient(transport, form, norm, t)
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def step(i, x):
    w = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    return sde_step(drift, diffusion, x, times[i], dt, w, order)

  x = jax.lax.fori_loop(0, num_steps - 1, step, noise)
  return last_step_update(transport, model_fn, x, t1, last_step, size, form, norm)


def ode_fixed_sample(velocity, noise, times, order=1):
  """Euler (order 1) or Heun (order 2) over the increasing times."""
  times = jnp.asarray(times, jnp.float32)

  def step(i, x):
    t, dt = times[i], times[i + 1] - times[i]
    v = velocity(x, t)
    if order == 1:
      return x + dt * v
    return x + 0.5 * dt * (v + velocity(x + dt * v, t + dt))

  return jax.lax.fori_loop(0, len(times) - 1, step, noise)


def _rms(x):
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def initial_step(velocity, x, t0, f0, atol, rtol, order=4):
  """Hairer, Norsett & Wanner's first step (Solving ODEs I, II.4), as torchdiffeq picks it for dopri5."""
  scale = atol + jnp.abs(x) * rtol
  d0, d1 = _rms(x / scale), _rms(f0 / scale)
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
  f1 = velocity(x + h0 * f0, t0 + h0)
  d2 = _rms((f1 - f0) / scale) / h0
  h1 = jnp.where((d1 <= 1e-15) & (d2 <= 1e-15), jnp.maximum(1e-6, h0 * 1e-3),
                 (0.01 / jnp.maximum(d1, d2))**(1 / (order + 1)))
  return jnp.minimum(100 * h0, h1)


def dopri5_step(velocity, x, t, h, f0):
  """One Dormand-Prince step: (x_next, its velocity (FSAL), the error estimate)."""
  k = [f0]
  for c, a in zip(DOPRI5_C[1:], DOPRI5_A[1:]):
    k.append(velocity(x + h * sum(a_j * k_j for a_j, k_j in zip(a, k)), t + c * h))
  x_next = x + h * sum(b * k_j for b, k_j in zip(DOPRI5_B, k) if b)
  k.append(velocity(x_next, t + h))
  error = h * sum((b - b4) * k_j for b, b4, k_j in zip(DOPRI5_B, DOPRI5_B4, k) if b != b4)
  return x_next, k[-1], error


def next_step_size(h, error_ratio, safety=0.9, grow=10.0, shrink=0.2, order=5):
  """torchdiffeq's `_optimal_step_size`: no shrinking below 1 after an accepted step."""
  shrink = jnp.where(error_ratio < 1, 1.0, shrink)
  factor = jnp.minimum(grow, jnp.maximum(safety / error_ratio**(1 / order), shrink))
  return h * jnp.where(error_ratio == 0, grow, factor)


def dopri5_integrate(velocity, x, t0, t1, atol=1e-6, rtol=1e-3, max_steps=1000):
  """(x at t1, steps tried) of dx/dt = velocity(x, t) from x at t0; x is NaN where t1 was not reached within
  max_steps tried steps."""
  t0, t1 = jnp.float32(t0), jnp.float32(t1)
  f0 = velocity(x, t0)
  h0 = initial_step(velocity, x, t0, f0, atol, rtol)

  def unfinished(state):
    _, t, _, _, tried = state
    return (t < t1) & (tried < max_steps)

  def attempt(state):
    x, t, h, f, tried = state
    last = h >= t1 - t
    h_step = jnp.where(last, t1 - t, h)
    x_next, f_next, error = dopri5_step(velocity, x, t, h_step, f)
    ratio = _rms(error / (atol + rtol * jnp.maximum(jnp.abs(x), jnp.abs(x_next))))
    accept = ratio <= 1
    h_next = next_step_size(h_step, ratio)
    x, t, f = (
        jnp.where(accept, new, old) for new, old in ((x_next, x), (jnp.where(last, t1, t + h_step), t), (f_next, f)))
    return x, t, jnp.where(jnp.isfinite(h_next), h_next, h_step * 0.2), f, tried + 1

  x, t, _, _, tried = jax.lax.while_loop(unfinished, attempt, (x, t0, h0, f0, jnp.int32(0)))
  return jnp.where(t >= t1, x, jnp.nan), tried


def shifted_times(times, shift):
  """SiT times (noise at 0) moved towards the noise for shift > 1, as sample.flow_shift moves flow times (noise at
  1): t -> 1 - f(1 - t) with f(u) = shift u / (1 + (shift - 1) u), which is LightningDiT's timestep_shift
  t -> s t / (1 + (s - 1) t) at s = 1 / shift (its 0.3 is shift 1 / 0.3)."""
  u = 1 - np.asarray(times, np.float64)
  return 1 - shift * u / (1 + (shift - 1) * u)


def transport_sample(transport, sample_config, model_fn, noise, rng):
  """Runs the transport sampler `sample_config.sampler` (module docstring) from noise at SiT time t0."""
  name, num_steps = sample_config.sampler, sample_config.num_steps
  if name in SDE_SAMPLERS:
    return sde_sample(transport, model_fn, noise, rng, num_steps, order=1 if name == 'sde_euler' else 2,
                      form=sample_config.diffusion_form, norm=sample_config.diffusion_norm,
                      last_step=sample_config.last_step, last_step_size=sample_config.last_step_size)
  velocity = ode_velocity(transport, model_fn)
  t0, t1 = time_interval(transport)
  if name == 'ode_dopri5':
    return dopri5_integrate(velocity, noise, t0, t1, sample_config.atol, sample_config.rtol,
                            sample_config.max_adaptive_steps)[0]
  if name in ('ode_euler', 'ode_heun'):
    times = shifted_times(np.linspace(t0, t1, num_steps), sample_config.flow_shift)
    return ode_fixed_sample(velocity, noise, times, order=1 if name == 'ode_euler' else 2)
  raise ValueError(f'sampler {name!r} does not apply to objective \'transport\'; choose one of '
                   f'{", ".join(TRANSPORT_SAMPLERS)}')
