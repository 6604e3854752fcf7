"""Min-SNR-gamma loss weighting (Hang et al., 2023): its closed forms, and the weighted loss in the train step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training import step as training_step
from configs.validate import validate_config
from diffusion.objectives import alpha_sigma, broadcast_to, loss_weight, mse_per_example, noised_batch
from diffusion.schedules import cosine_alphas_cumprod, linear_alphas_cumprod
from models import build_model
from models.conditioning import condition_from_batch, drop_condition, null_condition
from tests.tiny import tiny_unet_config
from training.state import create_optimizer, init_state

T = np.array([0, 10, 100, 250, 500, 750, 999])


@pytest.mark.parametrize('schedule', [linear_alphas_cumprod, cosine_alphas_cumprod])
def test_every_objective_weights_the_x0_error_by_min_snr_gamma(schedule):
  """One prediction written as eps, x0 and v: each objective's weighted MSE is min(SNR, gamma) |x0 - x0'|^2."""
  alphas_cumprod = schedule(1000)
  rng = np.random.default_rng(0)
  x0, noise = rng.standard_normal((2, len(T), 4, 4, 3)).astype(np.float32)
  x0_hat = x0 + 0.3 * rng.standard_normal(x0.shape).astype(np.float32)  # some network's x0 estimate
  alpha, sigma = (broadcast_to(v, x0) for v in alpha_sigma(alphas_cumprod, T))
  x_t = alpha * x0 + sigma * noise
  eps_hat = (x_t - alpha * x0_hat) / sigma
  predictions = {
      'eps': (eps_hat, noise), 'x0': (x0_hat, x0), 'v': (alpha * eps_hat - sigma * x0_hat, alpha * noise - sigma * x0)
  }
  a = alphas_cumprod[T].astype(np.float64)
  snr = a / (1 - a)
  expected = np.minimum(snr, 5.0) * np.mean((x0 - x0_hat)**2, axis=(1, 2, 3))
  for objective, (output, target) in predictions.items():
    weighted = loss_weight('min_snr', objective, alphas_cumprod, T, gamma=5.0) * mse_per_example(output, target)
    np.testing.assert_allclose(weighted, expected, rtol=2e-3, err_msg=objective)
  assert snr[0] > 1e3 and snr[-1] < 1e-2  # the cap binds at low noise, not at high noise


def test_weights_in_closed_form():
  alphas_cumprod = linear_alphas_cumprod(1000)
  a = alphas_cumprod[T].astype(np.float64)
  snr = a / (1 - a)
  np.testing.assert_array_equal(loss_weight('uniform', 'eps', alphas_cumprod, T), np.ones(len(T)))
  np.testing.assert_allclose(loss_weight('min_snr', 'eps', alphas_cumprod, T, 5.0), np.minimum(snr, 5) / snr, rtol=1e-5)
  np.testing.assert_allclose(loss_weight('min_snr', 'x0', alphas_cumprod, T, 5.0), np.minimum(snr, 5), rtol=1e-4)
  np.testing.assert_allclose(loss_weight('min_snr', 'v', alphas_cumprod, T, 5.0),
                             np.minimum(snr, 5) / (snr + 1), rtol=1e-4)
  # gamma above every SNR: eps keeps L_simple's unit weight
  np.testing.assert_allclose(loss_weight('min_snr', 'eps', alphas_cumprod, T, 1e6), np.ones(len(T)), rtol=1e-6)
  with pytest.raises(ValueError, match="objective 'flow' has no Min-SNR weighting"):
    loss_weight('min_snr', 'flow', alphas_cumprod, T)


@pytest.mark.parametrize('objective, learn_sigma', [('eps', False), ('v', False), ('eps', True)])
def test_train_step_minimises_the_weighted_loss(objective, learn_sigma):
  """The loss the train step reports (and differentiates) is the mean of weight x MSE, recomputed here from the
  step's own random draws; with learned variances the weight multiplies L_simple only."""
  c = tiny_unet_config()
  c.diffusion.update(objective=objective, learn_sigma=learn_sigma, loss_weighting='min_snr', min_snr_gamma=2.0)
  config = validate_config(c)
  model, tx = build_model(config), create_optimizer(config.optim)
  state = init_state(config, model, tx, jax.random.PRNGKey(0))
  images = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1), minval=-1, maxval=1)
  batch = {'image': images, 'label': jnp.arange(16) % 10}
  alphas_cumprod = jnp.asarray(linear_alphas_cumprod(1000))
  step = jax.jit(
      functools.partial(training_step.train_step, model=model, tx=tx, alphas_cumprod=alphas_cumprod, config=config))
  _, metrics = step(state, batch)  # jitted: op by op, the step took a minute here

  label_rng, noise_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
  cond = condition_from_batch(batch, config)
  cond = drop_condition(label_rng, cond, config.diffusion.label_dropout, null_condition(cond, config.data.num_classes))
  x_t, t, target = noised_batch(noise_rng, images, alphas_cumprod, config.diffusion)
  out = jax.jit(lambda p, x, t, cond, rng: model.apply({'params': p}, x, t, **cond, train=True, rngs={'dropout': rng}))(
      state.params, x_t, t, cond, dropout_rng)
  weight = loss_weight('min_snr', objective, alphas_cumprod, t.astype(jnp.int32), 2.0)
  mse = mse_per_example(out[..., :1] if learn_sigma else out, target)
  if learn_sigma:
    np.testing.assert_allclose(metrics['loss'] - metrics['vlb'], np.mean(weight * mse), rtol=1e-4)  # L_vlb x T / 1000
  else:
    np.testing.assert_allclose(metrics['loss'], np.mean(weight * mse), rtol=1e-5)
  assert np.abs(np.mean(weight * mse) - np.mean(mse)) > 0.05 * np.mean(mse)  # the weighting did something


def test_min_snr_needs_a_vp_objective():
  c = tiny_unet_config()
  c.diffusion.update(objective='flow', loss_weighting='min_snr')
  c.sample.sampler = 'euler'
  with pytest.raises(ValueError, match="loss_weighting='min_snr' weights discrete VP timesteps"):
    validate_config(c)
  c = tiny_unet_config()
  c.diffusion.update(loss_weighting='min_snr', min_snr_gamma=0.0)
  with pytest.raises(ValueError, match=r'config\.diffusion\.min_snr_gamma=0\.0 must be positive'):
    validate_config(c)
