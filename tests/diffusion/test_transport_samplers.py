"""Transport samplers on the exact model of Gaussian data (DESIGN.md section 3), guidance on transport predictions,
and the config checks of objective 'transport'."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import base_config
from configs.validate import validate_config
from diffusion.guidance import classifier_free_guidance
from diffusion.objectives import FLOW_TIME_SCALE
from diffusion.samplers import run_sampler
from diffusion.transport import Transport, default_eps, path_coefficients, velocity_from_output
from diffusion.transport_samplers import shifted_times
from jobs.edit import check_edit_settings
from tests.diffusion.test_samplers import MU, STD, assert_matches_data, gaussian_posterior_means, standard_noise


def transport(path, prediction):
  return Transport(path, prediction, *default_eps(path, prediction))


def exact_transport_model(path, prediction, mu=MU):
  """The ideal network of `prediction` for data N(mu, STD^2) on `path`, at network times t * FLOW_TIME_SCALE."""
  def model_fn(x, t_network):
    alpha, d_alpha, sigma, d_sigma = (c[:, None] for c in path_coefficients(path, t_network / FLOW_TIME_SCALE))
    data, noise = gaussian_posterior_means(x - alpha * (mu - MU), alpha, sigma)
    data = data + mu - MU
    return {'velocity': d_alpha * data + d_sigma * noise, 'noise': noise, 'score': -noise / sigma}[prediction]

  return model_fn


def sample_config(sampler, num_steps, **overrides):
  c = base_config().sample
  c.update(sampler=sampler, num_steps=num_steps, **overrides)
  return c


def run(config, path, prediction, noise, rng=None, model_fn=None):
  model_fn = model_fn or exact_transport_model(path, prediction)
  return jax.jit(
      lambda z: run_sampler(config, 'transport', None, model_fn, z, rng, transport=transport(path, prediction)))(noise)


# Fixed-step ODEs: first order converges at ~1000 grid points, Heun at ~100 (< 1% on every dimension).
@pytest.mark.parametrize('path,prediction,sampler,num_steps', [('linear', 'velocity', 'ode_euler', 1000),
                                                               ('linear', 'velocity', 'ode_heun', 100),
                                                               ('gvp', 'noise', 'ode_heun', 100),
                                                               ('vp', 'score', 'ode_heun', 250),
                                                               ('linear', 'velocity', 'ode_dopri5', 2),
                                                               ('gvp', 'score', 'ode_dopri5', 2),
                                                               ('vp', 'velocity', 'ode_dopri5', 2),
                                                               ('vp', 'noise', 'ode_dopri5', 2)])
def test_ode_samplers_map_noise_to_the_data_distribution(path, prediction, sampler, num_steps):
  assert_matches_data(run(sample_config(sampler, num_steps), path, prediction, standard_noise()), tol=0.01)


def test_shifted_times_are_lightningdits_timestep_shift():
  # hustvl/LightningDiT@2725fed transport/integrators.py ode: t -> s t / (1 + (s - 1) t) on linspace(0, 1, 5), s = 0.3
  expected = [0.0, 0.075 / 0.825, 0.15 / 0.65, 0.225 / 0.475, 1.0]
  np.testing.assert_allclose(shifted_times(np.linspace(0, 1, 5), 1 / 0.3), expected, rtol=1e-12, atol=1e-15)
  np.testing.assert_array_equal(shifted_times(np.linspace(0, 1, 5), 1.0), np.linspace(0, 1, 5))


def test_shifted_ode_grid_still_maps_noise_to_the_data_distribution():
  config = sample_config('ode_heun', 100, flow_shift=1 / 0.3)
  assert_matches_data(run(config, 'linear', 'velocity', standard_noise()), tol=0.01)


# SDEs inject noise: 20000 samples leave a sampling error of ~0.7% of a standard deviation in the mean. The last step
# is 0.004 long: SiT's default 0.04 stops at t = 0.96, from where its 'mean' step leaves data of std 0.3 2.8% narrow
# (the exact drift's slope there is 0.076, so the step scales x_0.96, of std 0.2908, by 1.003).
@pytest.mark.parametrize('path,prediction,sampler,form,last_step',
                         [('linear', 'velocity', 'sde_euler', 'sigma', 'mean'),
                          ('linear', 'velocity', 'sde_heun', 'sigma', 'tweedie'),
                          ('gvp', 'noise', 'sde_euler', 'sbdm', 'euler'),
                          ('vp', 'score', 'sde_heun', 'constant', 'none')])
def test_sde_samplers_reach_the_data_distribution(path, prediction, sampler, form, last_step):
  noise = jax.random.normal(jax.random.PRNGKey(1), (20_000, len(MU)))
  c = sample_config(sampler, 250, diffusion_form=form, last_step=last_step, last_step_size=0.004)
  assert_matches_data(run(c, path, prediction, noise, jax.random.PRNGKey(2)), tol=0.03)


@pytest.mark.parametrize('path', ['linear', 'gvp', 'vp'])
def test_guidance_is_the_same_for_every_prediction_and_samples_the_guided_gaussian(path):
  """CFG combines outputs linearly, and every prediction is affine in the score with coefficients of (x, t) alone, so
  guiding velocities, noises or scores gives one guided velocity field. For classes N(MU, STD^2) and N(-MU, STD^2)
  the guided score at scale 3 is that of N(-MU + 3 (MU + MU), STD^2) = N(5 MU, STD^2): the sampler must land there."""
  def guided_model(prediction, n):
    models = [exact_transport_model(path, prediction, mu) for mu in (MU, -MU)]
    apply_fn = lambda x, t, c: jnp.where(c['y'][:, None] == 0, models[0](x, t), models[1](x, t))
    return classifier_free_guidance(apply_fn, {'y': jnp.zeros((n,), jnp.int32)}, {'y': jnp.ones((n,), jnp.int32)}, 3.0)

  x, t = jax.random.normal(jax.random.PRNGKey(0), (8, len(MU))), jnp.linspace(100.0, 900.0, 8)
  velocities = {
      p: velocity_from_output(transport(path, p),
                              guided_model(p, 8)(x, t), x, t / FLOW_TIME_SCALE) for p in ('velocity', 'score', 'noise')
  }
  np.testing.assert_allclose(velocities['score'], velocities['velocity'], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(velocities['noise'], velocities['velocity'], rtol=1e-4, atol=1e-4)
  samples = np.asarray(
      run(sample_config('ode_dopri5', 2), path, 'velocity', standard_noise(), model_fn=guided_model('velocity', 2000)),
      np.float64)
  assert np.abs(samples.mean(0) - 5 * MU).max() < 0.01 and np.abs(samples.std(0) / STD - 1).max() < 0.01


def transport_config(**overrides):
  c = base_config()
  c.diffusion.objective, c.sample.sampler = 'transport', 'sde_euler'
  for key, value in overrides.items():
    section, field = key.split('__')
    c[section][field] = value
  return c


@pytest.mark.parametrize('overrides,message', [
    ({'sample__sampler': 'ddim'}, r"config.sample.sampler='ddim' does not apply to config.diffusion.objective="),
    ({'diffusion__objective': 'flow', 'sample__sampler': 'ode_heun'}, "'ode_heun' samples SiT transports"),
    ({'diffusion__objective': 'eps', 'sample__sampler': 'ddim', 'diffusion__cosine_loss_weight': 1.0
     }, 'config.diffusion.cosine_loss_weight=1.0 compares velocities'),
    ({'diffusion__path': 'cosine'}, "config.diffusion.path='cosine' is not valid"),
    ({'diffusion__prediction': 'x0'}, "config.diffusion.prediction='x0' is not valid"),
    ({'diffusion__transport_loss_weight': 'snr'}, 'config.diffusion.transport_loss_weight'),
    ({'diffusion__prediction': 'noise', 'diffusion__transport_loss_weight': 'snr'}, "'snr' is not valid"),
    ({'diffusion__transport_loss_weight': 'likelihood'}, 'SiT leaves velocity unweighted'),
    ({'sample__diffusion_form': 'SBDM'}, "config.sample.diffusion_form='SBDM' is not valid"),
    ({'sample__last_step': 'Mean'}, "config.sample.last_step='Mean' is not valid"),
    ({'diffusion__sample_eps': 0.6}, r'config.diffusion.sample_eps=0.6 must be in \[0, 0.5\)'),
    ({'sample__last_step_size': -0.1}, 'config.sample.last_step_size'),
    ({'sample__rtol': 0.0}, 'config.sample.rtol=0.0 must be positive'),
    ({'sample__max_adaptive_steps': 0}, 'config.sample.max_adaptive_steps'),
    ({'sample__diffusion_norm': -1.0}, 'config.sample.diffusion_norm'),
    ({'diffusion__prediction': 'score', 'diffusion__cosine_loss_weight': 1.0}, "needs diffusion.prediction='velocity'"),
    ({'diffusion__learn_sigma': True}, 'set learn_sigma=False'),
    ({'diffusion__loss_weighting': 'min_snr'}, "loss_weighting='uniform'"),
    ({'sample__num_steps': 1}, 'config.sample.num_steps=1'),
    ({'sample__diffusion_form': 'sbdm'}, 'set --config.diffusion.sample_eps=1e-3'),
    ({'sample__classifier_workdir': '/tmp/cls'}, "objective 'transport' has no such form"),
    ({'sample__sampler': 'sde_euler', 'sample__flow_shift': 3.0}, "'sde_euler' does not use it"),
])
def test_config_validation_names_the_transport_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    validate_config(transport_config(**overrides))


def test_valid_transport_configs_pass():
  for sampler in ('ode_euler', 'ode_heun', 'ode_dopri5', 'sde_euler', 'sde_heun'):
    validate_config(transport_config(sample__sampler=sampler))
  validate_config(
      transport_config(diffusion__path='vp', diffusion__prediction='noise', sample__diffusion_form='sbdm',
                       diffusion__transport_loss_weight='likelihood'))
  validate_config(
      transport_config(diffusion__cosine_loss_weight=1.0, diffusion__sample_eps=1e-3, sample__diffusion_form='sbdm',
                       sample__num_steps=1, sample__sampler='ode_dopri5'))


def test_editing_refuses_a_transport_model():
  with pytest.raises(ValueError, match="objective='transport' has none"):
    check_edit_settings(transport_config(), 0.5, False)
