"""SiT's stochastic interpolants (Ma et al., 2024): paths, training targets and loss weights, and the velocity and
score a network of each prediction stands for.

Time runs the other way from objective 'flow': x_t = alpha_t x_data + sigma_t noise, data at t = 1 and noise at
t = 0. The network's time input is t * FLOW_TIME_SCALE, so 1000 is the data end.

Paths (alpha_t, sigma_t):
  'linear'  t, 1 - t
  'gvp'     sin(pi t / 2), cos(pi t / 2)
  'vp'      exp(m_t), sqrt(1 - exp(2 m_t)), m_t = -(1 - t)^2 (beta_max - beta_min) / 4 - (1 - t) beta_min / 2
            (beta_min 0.1, beta_max 20: the VP SDE of Song et al., 2021 with its time reversed)

Predictions: 'velocity' u_t = alpha'_t x_data + sigma'_t noise; 'noise'; 'score' = grad log p_t(x_t) = -noise /
sigma_t. With r_t = alpha'_t / alpha_t and D_t = r_t sigma_t^2 - sigma_t sigma'_t (beta_t / 2 on 'vp'), the
probability-flow velocity of a score s is v = r_t x + D_t s (SiT's `compute_drift`), and a velocity maps back to
s = (v / r_t - x) / (sigma_t^2 - sigma_t sigma'_t / r_t) (`get_score_from_velocity`).

Loss (SiT's `training_losses`): a velocity prediction regresses u_t unweighted; a noise prediction regresses the
noise and a score prediction sigma_t s + noise = 0, each weighted by 'none' 1, 'velocity' (D_t / sigma_t)^2 or
'likelihood' D_t / sigma_t^2. LightningDiT (Yao et al., 2025) adds 1 - cos(output, u_t) over channels to the
velocity loss (`cosine_loss`).

Times avoid the ends where a coefficient is singular, as SiT's `check_interval`: `time_interval`. train_eps and
sample_eps left at 0 take SiT's defaults (`default_eps`): 'vp' 1e-5 and 1e-3; score or noise predictions on
'linear' and 'gvp' 1e-3 and 1e-3; velocity on 'linear' and 'gvp' 0 and 0 (the whole interval).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import FLOW_TIME_SCALE, broadcast_to

PATHS = ('linear', 'gvp', 'vp')
PREDICTIONS = ('velocity', 'score', 'noise')
TRANSPORT_LOSS_WEIGHTS = ('none', 'velocity', 'likelihood')
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0  # SiT's VPCPlan sigma_min, sigma_max


class Transport(NamedTuple):
  """A transport objective: its path, what the network predicts, and the time margins of training and sampling."""
  path: str
  prediction: str
  train_eps: float
  sample_eps: float


def default_eps(path, prediction):
  """SiT's (train_eps, sample_eps) for a path and prediction (its `create_transport`)."""
  if path == 'vp':
    return 1e-5, 1e-3
  if prediction != 'velocity':
    return 1e-3, 1e-3
  return 0.0, 0.0


def transport_from_config(diffusion_config):
  """The Transport of a config.diffusion with objective 'transport' (0 margins: SiT's defaults), else None."""
  if diffusion_config.objective != 'transport':
    return None
  path, prediction = diffusion_config.path, diffusion_config.prediction
  train_eps, sample_eps = default_eps(path, prediction)
  return Transport(path, prediction, diffusion_config.train_eps or train_eps, diffusion_config.sample_eps or sample_eps)


def time_interval(transport, sde=False, sbdm=False, last_step_size=0.0, sampling=True):
  """(t0, t1) of SiT's `check_interval`: where training draws times (sampling=False: train_eps) and sampling
  integrates (sample_eps); an SDE with a last step of size h > 0 stops at 1 - h."""
  eps = transport.sample_eps if sampling else transport.train_eps
  t1 = 1 - last_step_size if sde and last_step_size else 1 - eps
  if transport.path == 'vp':
    return 0.0, t1
  if transport.prediction != 'velocity':
    return eps, t1
  if sde:
    return (eps if sbdm else 0.0), t1
  return 0.0, 1.0


def _vp_log_mean(t):
  """m_t = log alpha_t of 'vp' and its derivative, which is beta_t / 2."""
  s = 1 - t
  log_mean = -0.25 * s**2 * (VP_BETA_MAX - VP_BETA_MIN) - 0.5 * s * VP_BETA_MIN
  return log_mean, 0.5 * s * (VP_BETA_MAX - VP_BETA_MIN) + 0.5 * VP_BETA_MIN


def path_coefficients(path, t):
  """(alpha_t, alpha'_t, sigma_t, sigma'_t) of the path at times t."""
  if path == 'linear':
    return t, jnp.ones_like(t), 1 - t, -jnp.ones_like(t)
  if path == 'gvp':
    angle = t * np.pi / 2
    return jnp.sin(angle), np.pi / 2 * jnp.cos(angle), jnp.cos(angle), -np.pi / 2 * jnp.sin(angle)
  if path == 'vp':
    log_mean, d_log_mean = _vp_log_mean(t)
    alpha, sigma = jnp.exp(log_mean), jnp.sqrt(1 - jnp.exp(2 * log_mean))
    return alpha, alpha * d_log_mean, sigma, -jnp.exp(2 * log_mean) * d_log_mean / sigma
  raise ValueError(f'unknown transport path {path!r}; choose one of {", ".join(PATHS)}')


def alpha_rate(path, t):
  """r_t = alpha'_t / alpha_t, in SiT's numerically stable forms."""
  if path == 'linear':
    return 1 / t
  if path == 'gvp':
    return np.pi / (2 * jnp.tan(t * np.pi / 2))
  return _vp_log_mean(t)[1]


def drift_variance(path, t):
  """D_t, the factor of the score in the probability-flow velocity (SiT's `compute_drift` second output)."""
  if path == 'vp':
    return 0.5 * (VP_BETA_MIN + (1 - t) * (VP_BETA_MAX - VP_BETA_MIN))
  _, _, sigma, d_sigma = path_coefficients(path, t)
  return alpha_rate(path, t) * sigma**2 - sigma * d_sigma


def interpolate(path, t, data, noise):
  """(x_t, u_t): the point on the path between noise (t = 0) and data (t = 1) and its velocity; t is [B]."""
  alpha, d_alpha, sigma, d_sigma = (broadcast_to(c, data) for c in path_coefficients(path, t))
  return alpha * data + sigma * noise, d_alpha * data + d_sigma * noise


def target_and_weight(transport, loss_weight, t, data, noise):
  """(target, [B] weight) such that weight * |output - target|^2 is SiT's loss of the prediction at times t."""
  if transport.prediction == 'velocity':
    return interpolate(transport.path, t, data, noise)[1], jnp.ones_like(t)
  sigma = path_coefficients(transport.path, t)[2]
  variance = drift_variance(transport.path, t)
  weight = {'none': jnp.ones_like(t), 'velocity': (variance / sigma)**2, 'likelihood': variance / sigma**2}[loss_weight]
  if transport.prediction == 'noise':
    return noise, weight
  return -noise / broadcast_to(sigma, noise), weight * sigma**2  # |sigma s + noise|^2 = sigma^2 |s + noise / sigma|^2


def sample_times(rng, batch_size, interval, sampling):
  """Training times in interval (t0, t1): uniform, or logit-normal(0, 1) mapped onto it (LightningDiT)."""
  if sampling == 'uniform':
    u = jax.random.uniform(rng, (batch_size,))
  elif sampling == 'logit_normal':
    u = jax.nn.sigmoid(jax.random.normal(rng, (batch_size,)))
  else:
    raise ValueError(f'unknown time sampling {sampling!r}')
  return interval[0] + (interval[1] - interval[0]) * u


def transport_batch(rng, data, diffusion_config):
  """Draws times and noise for a clean batch -> (x_t, network time input, target, [B] loss weight)."""
  transport = transport_from_config(diffusion_config)
  t_rng, n_rng = jax.random.split(rng)
  noise = jax.random.normal(n_rng, data.shape, jnp.float32)
  t = sample_times(t_rng, data.shape[0], time_interval(transport, sampling=False), diffusion_config.flow_time_sampling)
  x_t, _ = interpolate(transport.path, t, data, noise)
  target, weight = target_and_weight(transport, diffusion_config.transport_loss_weight, t, data, noise)
  return x_t, t * FLOW_TIME_SCALE, target, weight


def cosine_loss(output, target, eps=1e-8):
  """[B] mean over positions of 1 - cos(output, target) across channels (the last axis), torch's
  cosine_similarity with each norm clamped at eps (LightningDiT's `use_cosine_loss` term); its gradient at a zero
  output is finite."""
  output = output.astype(jnp.float32)
  unit = lambda v: v / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(v), axis=-1, keepdims=True), eps**2))  # 0 at v = 0
  cos = jnp.sum(unit(output) * unit(target), axis=-1)
  return jnp.mean(1 - cos, axis=tuple(range(1, cos.ndim)))


def velocity_from_output(transport, output, x, t):
  """The probability-flow velocity dx/dt at SiT times t ([B]) from the network output (SiT's `get_drift`)."""
  if transport.prediction == 'velocity':
    return output
  rate, variance = (broadcast_to(c, x) for c in (alpha_rate(transport.path, t), drift_variance(transport.path, t)))
  return rate * x + variance * score_from_output(transport, output, x, t)


def score_from_output(transport, output, x, t):
  """grad log p_t(x) at SiT times t ([B]) from the network output (SiT's `get_score`)."""
  alpha, d_alpha, sigma, d_sigma = (broadcast_to(c, x) for c in path_coefficients(transport.path, t))
  if transport.prediction == 'score':
    return output
  if transport.prediction == 'noise':
    return -output / sigma
  inverse_rate = alpha / d_alpha
  return (inverse_rate * output - x) / (sigma**2 - inverse_rate * d_sigma * sigma)


def noise_from_output(transport, output, x, t):
  """The noise prediction at SiT times t: -sigma_t times the score."""
  return -broadcast_to(path_coefficients(transport.path, t)[2], x) * score_from_output(transport, output, x, t)
