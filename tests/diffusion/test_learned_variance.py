"""Learned variances (Improved DDPM; diffusion/learned_variance.py): the bound's pieces in closed form, the
sampler's variances against diffusers' DDPMScheduler ('learned_range'), guidance, and training end to end."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training import sharding as sharding_lib
from jobs import train
from configs.validate import validate_config
from diffusion import learned_variance as lv
from diffusion.guidance import classifier_free_guidance
from diffusion.samplers import ddpm_sample, schedule_pairs
from diffusion.schedules import linear_alphas_cumprod, timestep_spacing
from models import build_model
from jobs.sample import generate_samples, make_generate_fn
from tests.diffusion.test_samplers import golden_model, golden_sample
from tests.training.test_train import read_metrics
from tests.tiny import tiny_unet_config

AC = linear_alphas_cumprod()


def test_discretized_gaussian_is_a_distribution_over_the_256_levels():
  levels = jnp.linspace(-1, 1, 256)
  for mean, log_scale in [(0.0, -3.0), (0.37, -1.0), (-0.9, -5.0), (0.2, 0.5)]:
    log_p = lv.discretized_gaussian_log_likelihood(levels, jnp.full(256, mean), jnp.full(256, log_scale))
    assert float(jnp.exp(log_p).sum()) == pytest.approx(1.0, abs=2e-3), (mean, log_scale)
  # a narrow Gaussian puts (almost) all its mass on the nearest level
  nearest = lv.discretized_gaussian_log_likelihood(levels[100], levels[100] + 1e-3, jnp.asarray(-8.0))
  assert float(jnp.exp(nearest)) == pytest.approx(1.0, abs=1e-3)


def test_normal_kl_closed_form():
  # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2
  assert float(lv.normal_kl(0.0, 0.0, 1.0, math.log(4.0))) == pytest.approx(math.log(2) + 0.25 - 0.5, rel=1e-6)
  assert float(lv.normal_kl(0.3, -2.0, 0.3, -2.0)) == 0.0


def test_vlb_vanishes_for_the_true_posterior_and_grows_away_from_it():
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
  t = jnp.array([1, 10, 500, 999])
  a = jnp.asarray(AC)[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise
  # eps prediction = the true noise, variance values -1 (= beta~): p is exactly q(x_{t-1} | x_t, x_0)
  exact = lv.vlb_per_example('eps', noise, -jnp.ones_like(x0), x0, x_t, t, AC)
  np.testing.assert_allclose(exact, 0.0, atol=2e-4)
  wrong_variance = lv.vlb_per_example('eps', noise, jnp.ones_like(x0), x0, x_t, t, AC)
  wrong_mean = lv.vlb_per_example('eps', noise + 0.5, -jnp.ones_like(x0), x0, x_t, t, AC)
  # beta and beta~ differ at small t (beta~_1 / beta_1 = 0.5) and agree at large t, and so does the bound
  assert bool(jnp.all(wrong_variance[:2] > 1e-3)) and bool(jnp.all(jnp.abs(wrong_variance[2:]) < 1e-5))
  assert bool(jnp.all(wrong_mean > exact + 1e-3))
  # t = 0 is the decoder's negative log-likelihood in bits: a good x_0 estimate costs few bits
  t0 = jnp.zeros(4, jnp.int32)
  x_1 = jnp.sqrt(AC[0]) * x0 + jnp.sqrt(1 - AC[0]) * noise
  nll = lv.vlb_per_example('eps', noise, -jnp.ones_like(x0), jnp.round(x0 * 127.5) / 127.5, x_1, t0, AC)
  assert bool(jnp.all((nll > 0) & (nll < 8)))


def test_learned_variance_matches_diffusers_learned_range():
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', variance_type='learned_range')
  scheduler.set_timesteps(10)
  timesteps = np.asarray(scheduler.timesteps)
  np.testing.assert_array_equal(timesteps, timestep_spacing(1000, 10, 'leading'))
  _, a_ts, a_prevs = schedule_pairs(AC, timesteps)
  min_logs, max_logs = lv.step_log_variance_bounds(a_ts, a_prevs)
  values = np.linspace(-1, 1, 7, dtype=np.float32)
  for i, t in enumerate(timesteps[:-1]):  # the last step adds no noise
    ours = lv.interpolated_log_variance(jnp.asarray(values), min_logs[i], max_logs[i])
    theirs = scheduler._get_variance(int(t), predicted_variance=torch.from_numpy(values))  # pylint: disable=protected-access
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('values,fixed', [(-1.0, 'posterior'), (1.0, 'beta')])
def test_learned_ddpm_at_the_bounds_is_the_fixed_variance_sampler(values, fixed):
  learned_model = lambda x, t: jnp.concatenate([golden_model(x, t), jnp.full_like(x, values)], axis=-1)
  timesteps = timestep_spacing(1000, 10, 'leading')
  rng = jax.random.PRNGKey(3)
  a = ddpm_sample(learned_model, golden_sample(), AC, timesteps, 'eps', rng, 'learned')
  b = ddpm_sample(golden_model, golden_sample(), AC, timesteps, 'eps', rng, fixed)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_guidance_guides_the_prediction_and_keeps_the_conditional_variance():
  def apply(x, t, cond):  # prediction = label, variance values = label / 10
    y = cond['y'].astype(jnp.float32)[:, None]
    return jnp.concatenate([jnp.broadcast_to(y, x.shape), jnp.broadcast_to(y / 10, x.shape)], axis=-1)

  model_fn = classifier_free_guidance(apply, {'y': jnp.array([2, 4])}, {'y': jnp.array([10, 10])}, 3.0,
                                      learned_variance=True)
  out = model_fn(jnp.zeros((2, 5)), jnp.zeros(2))
  np.testing.assert_allclose(out[:, :5], [[10 + 3 * (2 - 10)] * 5, [10 + 3 * (4 - 10)] * 5])
  np.testing.assert_allclose(out[:, 5:], [[0.2] * 5, [0.4] * 5], rtol=1e-6)
  # DiT's sampler guides the first 3 of its 4 latent channels and keeps the conditional prediction for the 4th
  model_fn = classifier_free_guidance(apply, {'y': jnp.array([2, 4])}, {'y': jnp.array([10, 10])}, 3.0,
                                      learned_variance=True, channels=3)
  out = model_fn(jnp.zeros((2, 4)), jnp.zeros(2))
  np.testing.assert_allclose(out, [[-14] * 3 + [2] + [0.2] * 4, [-8] * 3 + [4] + [0.4] * 4], rtol=1e-6)


def test_training_with_learned_sigma_lowers_both_terms_and_samples(tmp_path):
  c = tiny_unet_config(train__num_steps=60, train__log_every=20, train__checkpoint_every=60)
  c.diffusion.learn_sigma = True
  c.optim.learning_rate = 3e-3
  c.sample.sampler = 'ddpm'
  validate_config(c)
  state = train.train_and_evaluate(c, str(tmp_path))
  assert state.params['conv_out']['kernel'].shape[-1] == 2  # 1 channel: prediction + variance values
  loss, vlb = dict(read_metrics(tmp_path, 'loss')), dict(read_metrics(tmp_path, 'vlb'))
  assert sorted(vlb) == [20, 40, 60] and vlb[60] < vlb[20] and loss[60] < loss[20], (vlb, loss)
  mesh = sharding_lib.create_mesh(c.mesh)
  images, _ = generate_samples(c, make_generate_fn(c, build_model(c), mesh), state.ema_params, mesh, 8, seed=0,
                               guidance_scale=2.0)
  assert images.shape == (8, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0


def test_learned_sigma_needs_discrete_vp_steps():
  c = tiny_unet_config()
  c.diffusion.learn_sigma, c.diffusion.objective, c.sample.sampler = True, 'flow', 'euler'
  with pytest.raises(ValueError, match='learn_sigma=True .* objective eps, x0 or v'):
    validate_config(c)
