"""Training objectives: what the network predicts, how a batch is noised, and the loss.

Discrete-time VP diffusion: x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(a_t),
sigma_t = sqrt(1 - a_t). The network predicts eps, x_0 or v = alpha_t eps - sigma_t x_0
(Salimans & Ho, 2022). Flow matching (rectified flow): x_t = (1 - t) x_0 + t eps with t in
[0, 1] and velocity target eps - x_0; the network sees t * FLOW_TIME_SCALE as its time input.

The VP regression loss is weighted per timestep (`loss_weight`): uniformly (DDPM's L_simple), or by Min-SNR-gamma
(Hang et al., 2023), which caps the weight an example gets in x_0 space at gamma: with SNR = alpha^2 / sigma^2,
|eps - eps'|^2 = SNR |x_0 - x_0'|^2 and |v - v'|^2 = (SNR + 1) |x_0 - x_0'|^2, so the weights min(SNR, gamma) / SNR
(eps), min(SNR, gamma) (x0) and min(SNR, gamma) / (SNR + 1) (v) all make the loss min(SNR, gamma) |x_0 - x_0'|^2.
"""
import jax
import jax.numpy as jnp

from diffusion.schedules import sigma_at_timestep

FLOW_TIME_SCALE = 1000.0  # flow time t in [0, 1] -> network time input, on the scale of discrete timesteps

LOSS_WEIGHTINGS = ('uniform', 'min_snr')  # loss_weight


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


def denoise(model_fn, objective, x_t, t, alpha, sigma, clip_denoised=False):
  """One network call at network time t (a scalar, for the whole batch) read as (x_0, eps) at the
  noise level (alpha, sigma); with clip_denoised, x_0 is clipped to [-1, 1] and eps recomputed."""
  return read_output(objective, model_fn(x_t, jnp.full((x_t.shape[0],), t, jnp.float32)), x_t, alpha, sigma,
                     clip_denoised)


def read_output(objective, output, x_t, alpha, sigma, clip_denoised=False):
  """`predict_x0_eps`, with x_0 optionally clipped to [-1, 1] and eps recomputed from it."""
  x0, eps = predict_x0_eps(objective, output, x_t, alpha, sigma)
  if clip_denoised:
    x0 = jnp.clip(x0, -1, 1)
    eps = (x_t - alpha * x0) / sigma
  return x0, eps


# EDM preconditioning (Karras et al., 2022, Table 1) on a VP-discrete schedule. In the VE view
# x = x_t / alpha_t = x_0 + sigma eps, sigma = sigma_t / alpha_t, the denoiser is
#   D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, t)
# with F the network. F's time input stays the discrete timestep t (VP's c_noise, Table 1 column
# "VP"), and training keeps the uniform timestep distribution (EDM's log-normal sigma is not used).
# F is regressed on (x_0 - c_skip x) / c_out with unit weight: EDM's weight 1/c_out^2 on D's error.
# The denoiser D predicts x_0, so preconditioning 'edm' goes with objective 'x0'.


def edm_scalings(sigma, sigma_data):
  """(c_skip, c_out, c_in) of EDM Table 1 at VE noise level sigma."""
  total = sigma**2 + sigma_data**2
  return sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1 / jnp.sqrt(total)


def edm_network_input_and_target(x0, noise, sigma, sigma_data):
  """Training pair of the preconditioned network: (c_in x, (x_0 - c_skip x) / c_out), x = x_0 + sigma noise."""
  x = x0 + sigma * noise
  c_skip, c_out, c_in = edm_scalings(sigma, sigma_data)
  return c_in * x, (x0 - c_skip * x) / c_out


def edm_denoiser(network_fn, alphas_cumprod, sigma_data):
  """network_fn(c_in x, t) -> F  =>  model_fn(x_t, t) -> D(x_t / alpha_t; sigma_t / alpha_t), an x_0
  estimate; the samplers read it with objective 'x0'. t may be fractional (log-sigma interpolation)."""
  def model_fn(x_t, t):
    sigma = broadcast_to(sigma_at_timestep(alphas_cumprod, t), x_t)
    x = x_t * jnp.sqrt(1 + sigma**2)
    c_skip, c_out, c_in = edm_scalings(sigma, sigma_data)
    return c_skip * x + c_out * network_fn(c_in * x, t)

  return model_fn


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
  if diffusion_config.get('preconditioning', 'none') == 'edm':
    net_input, target = edm_network_input_and_target(x0, noise, sigma / alpha, diffusion_config.sigma_data)
    return net_input, t.astype(jnp.float32), target
  x_t = alpha * x0 + sigma * noise
  return x_t, t.astype(jnp.float32), regression_target(diffusion_config.objective, x0, noise, alpha, sigma)


def loss_weight(weighting, objective, alphas_cumprod, t, gamma=5.0):
  """[B] weights of the examples' regression losses at integer timesteps t (module docstring)."""
  if weighting == 'uniform':
    return jnp.ones(t.shape, jnp.float32)
  if weighting != 'min_snr':
    raise ValueError(f'unknown loss weighting {weighting!r}; choose one of {", ".join(LOSS_WEIGHTINGS)}')
  a = jnp.asarray(alphas_cumprod, jnp.float32)[t]
  snr = a / (1.0 - a)
  capped = jnp.minimum(snr, gamma)
  if objective == 'eps':
    return jnp.minimum(1.0, gamma / snr)  # = capped / snr, without 0 / 0 where SNR is 0
  if objective == 'x0':
    return capped
  if objective == 'v':
    return capped / (snr + 1.0)
  raise ValueError(f'objective {objective!r} has no Min-SNR weighting (it is for eps, x0 and v)')


def mse_per_example(output, target):
  return jnp.mean(jnp.square(output.astype(jnp.float32) - target), axis=tuple(range(1, output.ndim)))
