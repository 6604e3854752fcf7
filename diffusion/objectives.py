"""Training objectives: what the network predicts, how a batch is noised, and the loss.

Discrete-time VP diffusion: x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(a_t),
sigma_t = sqrt(1 - a_t). The network predicts eps, x_0 or v = alpha_t eps - sigma_t x_0
(Salimans & Ho, 2022). Flow matching (rectified flow): x_t = (1 - t) x_0 + t eps with t in
[0, 1] and velocity target eps - x_0; the network sees t * FLOW_TIME_SCALE as its time input.
"""
import jax
import jax.numpy as jnp

FLOW_TIME_SCALE = 1000.0  # flow time t in [0, 1] -> network time input, on the scale of discrete timesteps


def broadcast_to(v, x):
  """[B] -> [B, 1, 1, ...] to match x."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def alpha_sigma(alphas_cumprod, t):
  a = jnp.asarray(alphas_cumprod)[t]
  return jnp.sqrt(a), jnp.sqrt(1.0 - a)


def regression_target(objective, x0, noise, alpha, sigma):
  """What the network is trained to output; alpha, sigma broadcast against x0."""
  if objective == 'eps':
    return noise
  if objective == 'x0':
    return x0
  if objective == 'v':
    return alpha * noise - sigma * x0
  if objective == 'flow':
    return noise - x0
  raise ValueError(f'unknown objective {objective!r}')


def predict_x0_eps(objective, output, x_t, alpha, sigma):
  """Converts a VP network output to the implied (x_0, eps) pair."""
  if objective == 'eps':
    return (x_t - sigma * output) / alpha, output
  if objective == 'x0':
    return output, (x_t - alpha * output) / sigma
  if objective == 'v':
    return alpha * x_t - sigma * output, sigma * x_t + alpha * output
  raise ValueError(f'objective {objective!r} is not a VP prediction (eps, x0, v)')


def drop_labels(rng, labels, rate, num_classes):
  """Replaces each label by the null class (index num_classes) with probability `rate`."""
  drop = jax.random.bernoulli(rng, rate, labels.shape)
  return jnp.where(drop, num_classes, labels)


def sample_flow_time(rng, batch_size, sampling):
  """Flow-matching times in (0, 1): uniform, or logit-normal(0, 1) as in SD3 (Esser et al., 2024)."""
  if sampling == 'uniform':
    return jax.random.uniform(rng, (batch_size,), minval=1e-5, maxval=1.0)
  if sampling == 'logit_normal':
    return jax.nn.sigmoid(jax.random.normal(rng, (batch_size,)))
  raise ValueError(f'unknown flow time sampling {sampling!r}')


def noised_batch(rng, x0, alphas_cumprod, diffusion_config):
  """Draws times and noise for clean x0 -> (x_t, network time input, target)."""
  t_rng, n_rng = jax.random.split(rng)
  noise = jax.random.normal(n_rng, x0.shape, jnp.float32)
  if diffusion_config.objective == 'flow':
    t = sample_flow_time(t_rng, x0.shape[0], diffusion_config.flow_time_sampling)
    tb = broadcast_to(t, x0)
    x_t = (1 - tb) * x0 + tb * noise
    return x_t, t * FLOW_TIME_SCALE, regression_target('flow', x0, noise, None, None)
  t = jax.random.randint(t_rng, (x0.shape[0],), 0, len(alphas_cumprod))
  alpha, sigma = (broadcast_to(v, x0) for v in alpha_sigma(alphas_cumprod, t))
  x_t = alpha * x0 + sigma * noise
  return x_t, t.astype(jnp.float32), regression_target(diffusion_config.objective, x0, noise, alpha, sigma)


def mse_per_example(output, target):
  return jnp.mean(jnp.square(output.astype(jnp.float32) - target), axis=tuple(range(1, output.ndim)))
