"""Samplers: the DESIGN.md goldens, the exact-denoiser check for every sampler, retracing, guidance, EDM."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from training import sharding as sharding_lib
from configs.default import base_config
from configs.validate import validate_config
from diffusion.dpm_solver import dpm_solver_2m_sample, dpm_solver_timesteps
from diffusion.flow_samplers import flow_times
from diffusion.guidance import classifier_free_guidance
from diffusion.karras import churned_levels, karras_sigmas, schedule_karras_sigmas
from diffusion.objectives import (FLOW_TIME_SCALE, edm_denoiser, edm_network_input_and_target, edm_scalings,
                                  noised_batch, regression_target)
from diffusion.samplers import ddim_sample, run_sampler
from diffusion.transport import Transport, default_eps
from diffusion.schedules import (cosine_alphas_cumprod, linear_alphas_cumprod, sigma_at_timestep,
                                 sigmas_from_alphas_cumprod, timestep_at_sigma, timestep_spacing)
from jobs.sample import LONG_SAMPLING_LOOP, make_generate_fn, sampler_compiler_options
from tests.processes import FULL_OPTIMISATION

SCHEDULES = {'linear': linear_alphas_cumprod(), 'cosine': cosine_alphas_cumprod()}

# ----------------------------------------------------------------------------------------------
# DESIGN.md section 3 goldens


def golden_sample():
  n = 4 * 3 * 8 * 8
  return jnp.asarray(np.transpose(np.arange(n).reshape(3, 8, 8, 4) / n, (3, 0, 1, 2)), jnp.float32)


def golden_model(x, t):
  return x * (t / (t + 1)).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize('objective,expected_sum', [('eps', 172.0067), ('v', 52.5302)])
def test_ddim_golden(objective, expected_sum):
  x = ddim_sample(golden_model, golden_sample(), linear_alphas_cumprod(), timestep_spacing(1000, 10, 'leading'),
                  objective, eta=0.0, clip_denoised=True)
  assert float(jnp.abs(x).sum()) == pytest.approx(expected_sum, rel=1e-3)
  if objective == 'eps':
    assert float(jnp.abs(x).mean()) == pytest.approx(0.223967, rel=1e-3)


def test_dpm_solver_2m_golden():
  timesteps = dpm_solver_timesteps(1000, 10, 'linspace')
  np.testing.assert_array_equal(timesteps, [999, 899, 799, 699, 599, 500, 400, 300, 200, 100])
  x = dpm_solver_2m_sample(golden_model, golden_sample(), linear_alphas_cumprod(), timesteps, 'eps')
  assert float(jnp.abs(x).mean()) == pytest.approx(0.3301, rel=1e-3)
  # the same through the config dispatch
  c = sample_config(sampler='dpm++2m', num_steps=10, spacing='linspace')
  x = run_sampler(c, 'eps', linear_alphas_cumprod(), golden_model, golden_sample(), jax.random.PRNGKey(0))
  assert float(jnp.abs(x).mean()) == pytest.approx(0.3301, rel=1e-3)


def test_dpm_solver_timestep_spacings():
  np.testing.assert_array_equal(dpm_solver_timesteps(1000, 4, 'leading'), [800, 600, 400, 200])
  np.testing.assert_array_equal(dpm_solver_timesteps(1000, 4, 'trailing'), [999, 749, 499, 249])
  with pytest.raises(ValueError, match='DPM-Solver steps'):
    dpm_solver_timesteps(1000, 1000, 'linspace')


# ----------------------------------------------------------------------------------------------
# Exact denoiser: data ~ N(mu, diag(s^2)) has closed-form E[x_0 | x_t] and E[eps | x_t]

MU = np.array([0.5, -0.3, 0.0, 0.2], np.float32)
STD = np.array([0.5, 0.8, 1.0, 0.3], np.float32)


def gaussian_posterior_means(x, alpha, sigma):
  """E[x_0 | x] and E[eps | x] for x = alpha x_0 + sigma eps, x_0 ~ N(MU, STD^2), eps ~ N(0, I)."""
  var = alpha**2 * STD**2 + sigma**2
  centred = x - alpha * MU
  return MU + alpha * STD**2 / var * centred, sigma / var * centred


def batch_sigma(alphas_cumprod, t):
  """[B, 1] VE sigmas at the timesteps t of a batch that the samplers evaluate at one time: the log-sigma
  interpolation is taken once (for 200k samples it was half of a sampling loop's time); a batch of mixed times would
  be denoised at the first one's noise level and fail the tests."""
  return jnp.broadcast_to(sigma_at_timestep(alphas_cumprod, t[:1]), t.shape)[:, None]


def exact_vp_model(objective, alphas_cumprod):
  """The ideal network of `objective` at (fractional) timesteps: sigma by log-sigma interpolation."""
  def model_fn(x, t):
    ve = batch_sigma(alphas_cumprod, t)
    alpha, sigma = 1 / jnp.sqrt(1 + ve**2), ve / jnp.sqrt(1 + ve**2)
    x0, eps = gaussian_posterior_means(x, alpha, sigma)
    return {'eps': eps, 'x0': x0, 'v': alpha * eps - sigma * x0}[objective]

  return model_fn


def exact_flow_model(x, t):
  t = (t / FLOW_TIME_SCALE)[:, None]
  x0, eps = gaussian_posterior_means(x, 1 - t, t)
  return eps - x0


def exact_edm_network(alphas_cumprod, sigma_data):
  """The ideal preconditioned network F(c_in x, t) = (E[x_0 | x] - c_skip x) / c_out."""
  def network_fn(net_input, t):
    ve = batch_sigma(alphas_cumprod, t)
    c_skip, c_out, c_in = edm_scalings(ve, sigma_data)
    x = net_input / c_in
    x0, _ = gaussian_posterior_means(x, 1.0, ve)
    return (x0 - c_skip * x) / c_out

  return network_fn


def standard_noise(n=2000, seed=0):
  """N(0, I) draws standardised to mean 0 and std 1 per dimension, so only the sampler's error shows."""
  z = np.random.default_rng(seed).standard_normal((n, len(MU)))
  return jnp.asarray((z - z.mean(0)) / z.std(0), jnp.float32)


def sample_config(**overrides):
  c = base_config().sample
  c.clip_denoised = False
  c.update(overrides)
  return c


def assert_matches_data(samples, tol):
  samples = np.asarray(samples, np.float64)
  mean_error = np.abs(samples.mean(0) - MU) / STD
  std_error = np.abs(samples.std(0) / STD - 1)
  assert mean_error.max() < tol and std_error.max() < tol, (mean_error, std_error)


# Second-order samplers converge at 250 steps (< 0.6% here), first-order ones at 1000 (< 0.8%).
# At 50 steps the worst dimension (std 0.3) is off by 0.7% (heun, linear), 4.7% (heun, cosine:
# its sigma_max = 2e4 spends steps at huge noise; 0.6% from karras_sigma_max=80), 10% (dpm++2m), 9% (ddim),
# 6-14% (euler).
DETERMINISTIC_VP = [('ddim', 1000, 'trailing'), ('dpm++2m', 250, 'linspace'), ('dpm++2m', 250, 'karras'),
                    ('heun', 250, 'trailing'), ('euler', 1000, 'trailing')]  # linspace and trailing start at T - 1


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
@pytest.mark.parametrize('objective', ['eps', 'v'])
@pytest.mark.parametrize('sampler,num_steps,spacing', DETERMINISTIC_VP)
def test_exact_denoiser_vp(sampler, num_steps, spacing, objective, schedule):
  ac = SCHEDULES[schedule]
  c = sample_config(sampler=sampler, num_steps=num_steps, spacing=spacing, eta=0.0)
  run = jax.jit(lambda z: run_sampler(c, objective, ac, exact_vp_model(objective, ac), z, jax.random.PRNGKey(0)))
  assert_matches_data(run(standard_noise()), tol=0.01)


def test_karras_levels_fix_few_step_dpm_solver_on_the_linear_schedule():
  """DPM++ 2M on the linear schedule misses the std by 10.5% at 50 steps on linspace timesteps and by 0.8% on
  Karras noise levels (20 steps: 29% and 5.4%); the mean error, 0.3%, is the x_T signal dropped at sigma 157."""
  def std_error(spacing, num_steps):
    c = sample_config(sampler='dpm++2m', num_steps=num_steps, spacing=spacing)
    samples = np.asarray(
        run_sampler(c, 'eps', SCHEDULES['linear'], exact_vp_model('eps', SCHEDULES['linear']), standard_noise(),
                    jax.random.PRNGKey(0)), np.float64)
    return np.abs(samples.std(0) / STD - 1).max()

  assert std_error('linspace', 50) > 0.1 and std_error('karras', 50) < 0.01
  assert std_error('linspace', 20) > 0.25 and std_error('karras', 20) < 0.06


def test_churned_levels_closed_form():
  sigmas = np.array([80.0, 10.0, 1.0, 0.02, 0.0])
  np.testing.assert_allclose(churned_levels(sigmas, 40.0, s_tmin=0.05, s_tmax=50.0),
                             [80.0, 10 * np.sqrt(2), np.sqrt(2), 0.02])  # gamma = min(40 / 4, sqrt 2 - 1)
  np.testing.assert_allclose(churned_levels(sigmas, 0.8), [96.0, 12.0, 1.2, 0.024])  # gamma = 0.8 / 4
  np.testing.assert_allclose(churned_levels(sigmas, 0.8, sigma_cap=90.0), [90.0, 12.0, 1.2, 0.024])


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
@pytest.mark.parametrize('num_steps,churn', [(250, dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0)),
                                             (500, dict(s_churn=80.0))])
def test_edm_stochastic_heun_reaches_the_data_distribution(num_steps, churn, schedule):
  """EDM Algorithm 2 with the exact denoiser: the noise added and removed leaves the data distribution. The churn
  noise is not standardised, so 200k samples (20k: 1-2% Monte Carlo error in the std). Measured worst errors
  0.5% / 0.7% (250 steps, EDM's churn, linear / cosine) and 0.2% / 0.4% (500 steps, S_churn 80); churn widens
  the steps, so 250 steps at S_churn 80 are 1.1% off on the cosine schedule."""
  ac = SCHEDULES[schedule]
  c = sample_config(sampler='heun', num_steps=num_steps, **churn)
  run = jax.jit(lambda z: run_sampler(c, 'eps', ac, exact_vp_model('eps', ac), z, jax.random.PRNGKey(1)),
                compiler_options=FULL_OPTIMISATION)
  assert_matches_data(run(standard_noise(200_000)), tol=0.01)


def edm_algorithm_2(denoiser, x, sigmas, noises, s_churn, s_tmin, s_tmax, s_noise, order):
  """EDM's Algorithm 2 (Karras et al. 2022) as the paper and k-diffusion's sample_heun write it: a float64 loop
  that computes gamma, raises the noise, and takes an Euler step to sigma 0 or a Heun step otherwise."""
  n = len(sigmas) - 1
  for i in range(n):
    gamma = min(s_churn / n, np.sqrt(2) - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (1 + gamma)
    x = x + s_noise * np.sqrt(sigma_hat**2 - sigmas[i]**2) * noises[i]
    d = (x - denoiser(x, sigma_hat)) / sigma_hat
    x_next = x + (sigmas[i + 1] - sigma_hat) * d
    if order == 2 and sigmas[i + 1] > 0:
      d_next = (x_next - denoiser(x_next, sigmas[i + 1])) / sigmas[i + 1]
      x_next = x + (sigmas[i + 1] - sigma_hat) * (d + d_next) / 2
    x = x_next
  return x


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
@pytest.mark.parametrize('order', [1, 2])
@pytest.mark.parametrize('churn', [
    dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003),
    dict(s_churn=5.0, s_tmin=0.0, s_tmax=20.0, s_noise=1.0)
])
def test_stochastic_heun_and_euler_equal_edm_algorithm_2_as_a_loop(schedule, order, churn):
  """The same smooth eps model and the same noise draws (ours: normal(fold_in(rng, i)) at step i) in both. The
  second churn setting also churns the last step. k-diffusion 0.1.1's sample_heun / sample_euler, run by hand on
  this setup (docs/samplers.md), agreed with ours to 1.3e-6 of the largest value."""
  from diffusion.karras import karras_sample  # pylint: disable=import-outside-toplevel
  ac, num_steps, rng = SCHEDULES[schedule], 12, jax.random.PRNGKey(7)
  noise = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
  model = lambda x, t: 0.8 * np.tanh(x) * (1 + 0.3 * np.cos(t / 300.0)) + 0.05 * np.sin(t / 97.0)
  jax_model = lambda x, t: 0.8 * jnp.tanh(x) * (1 + 0.3 * jnp.cos(t.reshape(-1, 1, 1, 1) / 300.0)) + 0.05 * jnp.sin(
      t.reshape(-1, 1, 1, 1) / 97.0)

  def denoiser(x, sigma):  # D(x; sigma) of an eps model on the VP input at the fractional timestep of sigma
    return x - sigma * model(x / np.sqrt(1 + sigma**2), timestep_at_sigma(ac, np.array([sigma]))[0])

  sigmas = schedule_karras_sigmas(ac, num_steps)
  noises = [
      np.asarray(jax.random.normal(jax.random.fold_in(rng, i), noise.shape), np.float64) for i in range(num_steps)
  ]
  reference = edm_algorithm_2(denoiser, noise * np.sqrt(1 + sigmas[0]**2), sigmas, noises, order=order, **churn)
  ours = np.asarray(karras_sample(jax_model, jnp.asarray(noise), ac, num_steps, 'eps', order=order, rng=rng, **churn))
  err = np.abs(ours - reference).max() / np.abs(reference).max()
  assert err < 5e-6, f"max error {err:.2g} of the largest value"  # measured 2e-7 to 1.3e-6 (float32 vs float64)


@pytest.mark.parametrize('sampler', ['heun', 'euler'])
def test_churn_draws_from_the_rng_and_zero_churn_is_the_deterministic_sampler(sampler):
  ac, model = SCHEDULES['linear'], exact_vp_model('eps', SCHEDULES['linear'])
  run = lambda c, seed: np.asarray(run_sampler(c, 'eps', ac, model, standard_noise(64), jax.random.PRNGKey(seed)))
  deterministic = sample_config(sampler=sampler, num_steps=10)
  churned = sample_config(sampler=sampler, num_steps=10, s_churn=10.0)
  np.testing.assert_array_equal(run(deterministic, 0), run(deterministic, 1))
  assert not np.allclose(run(churned, 0), run(churned, 1), atol=1e-2)
  assert not np.allclose(run(churned, 0), run(deterministic, 0), atol=1e-2)
  # S_tmax below every level: no step churns, and the result is the deterministic one
  np.testing.assert_allclose(run(sample_config(sampler=sampler, num_steps=10, s_churn=10.0, s_tmax=1e-3), 0),
                             run(deterministic, 0), rtol=1e-6, atol=1e-6)


def test_karras_sigma_max_fixes_few_step_heun_on_the_cosine_schedule():
  """From the cosine schedule's sigma_max (2e4) Heun at 50 steps misses the std by 4.7%; from EDM's 80 it is
  within 1% (measured 0.6%: dropping the signal left in x at sigma 80 costs 1/80 of it)."""
  ac = SCHEDULES['cosine']

  def run(**overrides):
    c = sample_config(sampler='heun', num_steps=50, **overrides)
    return jax.jit(lambda z: run_sampler(c, 'eps', ac, exact_vp_model('eps', ac), z, jax.random.PRNGKey(0)))(
        standard_noise())

  assert_matches_data(run(karras_sigma_max=80.0), tol=0.01)
  with pytest.raises(AssertionError):
    assert_matches_data(run(), tol=0.03)
  np.testing.assert_allclose(
      schedule_karras_sigmas(ac, 10, sigma_max=80.0)[[0, 9]], [80.0, sigmas_from_alphas_cumprod(ac)[0]])


def test_karras_sigma_max_outside_the_schedule_fails_at_start():
  c = base_config()
  c.sample.sampler, c.sample.karras_sigma_max = 'heun', 200.0  # linear schedule's largest sigma is 157
  with pytest.raises(ValueError, match=r'karras_sigma_max=200 .*\(0.01\d*, 157\.'):
    validate_config(c)
  c.sample.karras_sigma_max = 80.0
  validate_config(c)


@pytest.mark.parametrize('sampler,num_steps,shift', [('euler', 1000, 1.0), ('heun', 50, 1.0), ('heun', 250, 3.0)])
def test_exact_denoiser_flow(sampler, num_steps, shift):
  c = sample_config(sampler=sampler, num_steps=num_steps, flow_shift=shift)
  run = jax.jit(lambda z: run_sampler(c, 'flow', None, exact_flow_model, z, None))
  assert_matches_data(run(standard_noise()), tol=0.01)


@pytest.mark.parametrize('variance', ['posterior', 'beta'])
@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_ddpm_ancestral_reaches_the_data_distribution(variance, schedule):
  ac = SCHEDULES[schedule]
  c = sample_config(sampler='ddpm', num_steps=1000, spacing='trailing', ddpm_variance=variance)
  noise = jax.random.normal(jax.random.PRNGKey(1), (20_000, len(MU)))
  x = jax.jit(lambda z: run_sampler(c, 'eps', ac, exact_vp_model('eps', ac), z, jax.random.PRNGKey(2)),
              compiler_options=FULL_OPTIMISATION)(noise)
  assert_matches_data(x, tol=0.04)  # Monte Carlo error of 20k draws: ~0.7% of std on the mean


@pytest.mark.parametrize('sampler,num_steps', [('heun', 250), ('ddim', 1000)])
def test_exact_denoiser_with_edm_preconditioning(sampler, num_steps):
  ac = SCHEDULES['linear']
  c = sample_config(sampler=sampler, num_steps=num_steps, spacing='trailing')
  denoiser = edm_denoiser(exact_edm_network(ac, 0.5), ac, 0.5)  # as jobs/guided.py hands it to the samplers
  run = jax.jit(lambda z: run_sampler(c, 'x0', ac, denoiser, z, jax.random.PRNGKey(0)))
  assert_matches_data(run(standard_noise()), tol=0.01)


# ----------------------------------------------------------------------------------------------
# Noise levels and times


def test_log_sigma_interpolation_round_trips():
  ac = SCHEDULES['cosine']
  t = np.array([0.0, 0.25, 17.5, 500.0, 998.9, 999.0])
  np.testing.assert_allclose(timestep_at_sigma(ac, sigma_at_timestep(ac, t)), t, atol=1e-6)
  np.testing.assert_allclose(sigma_at_timestep(ac, np.arange(1000.0)), sigmas_from_alphas_cumprod(ac), rtol=1e-9)
  np.testing.assert_allclose(np.asarray(sigma_at_timestep(ac, jnp.asarray(t, jnp.float32))), sigma_at_timestep(ac, t),
                             rtol=1e-4)


def test_karras_sigmas():
  sigmas = karras_sigmas(5, 0.002, 80.0, rho=7.0)
  assert len(sigmas) == 6 and sigmas[-1] == 0
  np.testing.assert_allclose(sigmas[[0, 4]], [80.0, 0.002])
  assert np.all(np.diff(sigmas) < 0)
  mid = (80**(1 / 7) + 0.5 * (0.002**(1 / 7) - 80**(1 / 7)))**7
  np.testing.assert_allclose(sigmas[2], mid)
  s = sigmas_from_alphas_cumprod(SCHEDULES['linear'])
  np.testing.assert_allclose(schedule_karras_sigmas(SCHEDULES['linear'], 10)[[0, 9]], [s[-1], s[0]])


def test_flow_times():
  np.testing.assert_allclose(flow_times(4), [1, 0.75, 0.5, 0.25, 0])
  np.testing.assert_allclose(flow_times(2, shift=3.0), [1, 0.75, 0])


# ----------------------------------------------------------------------------------------------
# Compilation: a jitted sampler traces once for repeated calls of the same shapes


@pytest.mark.parametrize('sampler,objective,extra', [('ddpm', 'eps', {}), ('ddim', 'eps', {}), ('dpm++2m', 'v', {}),
                                                     ('dpm++2m', 'eps', dict(spacing='karras')), ('heun', 'eps', {}),
                                                     ('heun', 'eps', dict(s_churn=10.0)), ('euler', 'x0', {}),
                                                     ('heun', 'flow', {}), ('euler', 'flow', {}),
                                                     ('ode_heun', 'transport', dict(flow_shift=3.0)),
                                                     ('ode_dopri5', 'transport', {}), ('sde_euler', 'transport', {}),
                                                     ('sde_heun', 'transport', dict(last_step='tweedie'))])
def test_sampler_traces_once(sampler, objective, extra):
  ac = SCHEDULES['linear']
  c = sample_config(sampler=sampler, num_steps=8, eta=0.5, **extra)
  model_fn = exact_flow_model if objective == 'flow' else exact_vp_model(objective, ac)
  transport = None
  if objective == 'transport':  # SiT's linear path, velocity: the exact flow model read in SiT time
    model_fn = lambda x, t: -exact_flow_model(x, FLOW_TIME_SCALE - t)
    transport = Transport('linear', 'velocity', *default_eps('linear', 'velocity'))
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def generate(noise, rng):
    return run_sampler(c, objective, ac, model_fn, noise, rng, transport=transport)

  first = generate(jnp.ones((16, 4)), jax.random.PRNGKey(0))
  second = generate(jnp.zeros((16, 4)), jax.random.PRNGKey(1))  # new values, same shapes: no retrace
  again = generate(jnp.ones((16, 4)), jax.random.PRNGKey(0))
  assert first.shape == second.shape == (16, 4)
  np.testing.assert_array_equal(first, again)  # deterministic for a given rng


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance


def toy_apply(x, t, cond):
  """Conditional output x + y, unconditional (y = null = 10) x + 10, plus the time."""
  return x + cond['y'][:, None].astype(x.dtype) + t[:, None] / 1000


def guided(scale, interval=None):
  labels = jnp.array([1, 2, 3])
  return classifier_free_guidance(toy_apply, {'y': labels}, {'y': jnp.full_like(labels, 10)}, scale, interval)


def test_guidance_scale_one_is_conditional_and_zero_unconditional():
  x, t = jnp.ones((3, 2)), jnp.array([100.0, 500.0, 900.0])
  np.testing.assert_allclose(guided(1.0)(x, t), toy_apply(x, t, {'y': jnp.array([1, 2, 3])}), rtol=1e-6)
  np.testing.assert_allclose(guided(0.0)(x, t), toy_apply(x, t, {'y': jnp.full(3, 10)}), rtol=1e-6)
  u, cnd = toy_apply(x, t, {'y': jnp.full(3, 10)}), toy_apply(x, t, {'y': jnp.array([1, 2, 3])})
  np.testing.assert_allclose(guided(3.0)(x, t), u + 3.0 * (cnd - u), rtol=1e-6)


def test_guidance_scale_one_runs_only_the_conditional_batch():
  x, t, batches = jnp.ones((3, 2)), jnp.array([100.0, 500.0, 900.0]), []

  def counting_apply(x, t, cond):
    jax.debug.callback(lambda n: batches.append(int(n)), x.shape[0])
    return toy_apply(x, t, cond)

  labels = jnp.array([1, 2, 3])
  model_fn = jax.jit(lambda x, t, scale: classifier_free_guidance(counting_apply, {'y': labels},
                                                                  {'y': jnp.full_like(labels, 10)}, scale)(x, t))
  for scale in (1.0, 2.0, 1.0):  # one program for every scale
    model_fn(x, t, scale).block_until_ready()
  assert batches == [3, 6, 3], batches


def test_guidance_interval_switches_guidance_off_outside():
  x, t = jnp.ones((3, 2)), jnp.array([100.0, 500.0, 900.0])
  out = np.asarray(guided(3.0, interval=(200.0, 800.0))(x, t))
  np.testing.assert_allclose(out[[0, 2]], np.asarray(guided(1.0)(x, t))[[0, 2]], rtol=1e-6)  # outside: conditional
  np.testing.assert_allclose(out[1], guided(3.0)(x, t)[1], rtol=1e-6)  # inside: guided


class ToyModel:
  """Stands in for a flax module in make_generate_fn: apply(variables, x, t, y)."""
  def apply(self, variables, x, t, y):
    return 0.1 * x + 0.01 * (y.astype(x.dtype) - 4.5)[:, None, None, None]


@pytest.mark.parametrize('sampler', ['ddim', 'heun'])
def test_make_generate_fn_applies_the_guidance_interval(sampler):
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
  labels, noise = jnp.arange(8) % 10, jax.random.normal(jax.random.PRNGKey(0), (8, 2, 2, 1))

  def generate(scale, interval):
    c = base_config()
    c.data.image_size, c.data.channels = 2, 1
    c.sample.sampler, c.sample.num_steps, c.sample.guidance_interval = sampler, 4, interval
    return np.asarray(
        make_generate_fn(c, ToyModel(), mesh)({}, {'y': labels}, noise, jax.random.PRNGKey(0), jnp.float32(scale)))

  plain, guided_everywhere = generate(1.0, ()), generate(3.0, ())
  assert np.abs(plain - guided_everywhere).max() > 1e-3
  np.testing.assert_allclose(generate(3.0, (5000.0, 6000.0)), plain, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(generate(3.0, (0.0, 1000.0)), guided_everywhere, rtol=1e-5, atol=1e-6)


def test_generate_fn_compiled_ahead_is_the_same_function_and_the_sampler_table_runs():
  """benchmarks/sampler_table.py times compilation apart through generate_fn.compile_for."""
  from benchmarks.sampler_table import time_cell
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
  c = base_config()
  c.data.image_size, c.data.channels = 2, 1
  c.sample.sampler, c.sample.num_steps, c.sample.batch_size, c.sample.s_churn = 'heun', 4, 8, 2.0
  generate_fn = make_generate_fn(c, ToyModel(), mesh)
  args = ({}, {'y': jnp.arange(8) % 10}, jax.random.normal(jax.random.PRNGKey(0),
                                                           (8, 2, 2, 1)), jax.random.PRNGKey(1), jnp.float32(2.0))
  np.testing.assert_array_equal(generate_fn.compile_for(*args)(*args), generate_fn(*args))
  images, labels, seconds, compile_seconds = time_cell(c, ToyModel(), {}, mesh, 8, seed=0)
  assert images.shape[:3] == (8, 2, 2) and images.dtype == np.uint8 and labels.shape == (8,)
  assert seconds > 0 and compile_seconds > 0


def test_long_sampling_loops_compile_at_full_optimisation_and_short_ones_at_the_process_flags():
  c = base_config().sample
  c.sampler, c.num_steps, c.batch_size = 'ddim', 4, LONG_SAMPLING_LOOP // 4 - 1
  assert sampler_compiler_options(c) is None  # the tests' fast-compile level 0 (tests/processes.py)
  c.batch_size = LONG_SAMPLING_LOOP // 4
  assert sampler_compiler_options(c) == {'xla_backend_optimization_level': 3}
  c.sampler, c.num_steps, c.batch_size, c.max_adaptive_steps = 'ode_dopri5', 1, 1, LONG_SAMPLING_LOOP  # its most
  assert sampler_compiler_options(c) == {'xla_backend_optimization_level': 3}


# ----------------------------------------------------------------------------------------------
# EDM preconditioning


def test_edm_training_pair_and_sampling_denoiser_agree():
  """noised_batch's (input, target) and edm_denoiser invert each other: F = target gives D = x_0."""
  ac = SCHEDULES['linear']
  config = base_config().diffusion
  config.objective, config.preconditioning, config.sigma_data = 'x0', 'edm', 0.5
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (64, 4, 4, 1), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(1)
  net_input, t, target = noised_batch(rng, x0, ac, config)
  # the noise and timesteps noised_batch drew, rebuilt as the VP sample the samplers hold
  t_rng, n_rng = jax.random.split(rng)
  noise = jax.random.normal(n_rng, x0.shape, jnp.float32)
  a = jnp.asarray(ac)[t.astype(jnp.int32)].reshape(-1, 1, 1, 1)
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise

  def oracle(inp, t_in):
    np.testing.assert_allclose(inp, net_input, rtol=1e-4, atol=1e-5)  # the network sees what it was trained on
    return target

  np.testing.assert_allclose(edm_denoiser(oracle, ac, 0.5)(x_t, t), x0, atol=1e-4)


def test_edm_network_input_and_target_have_unit_variance():
  """EDM's point: for data of std sigma_data, F's input and target have unit variance at every noise level."""
  config = base_config().diffusion
  config.objective, config.preconditioning, config.sigma_data = 'x0', 'edm', 0.5
  x0 = 0.5 * jax.random.normal(jax.random.PRNGKey(0), (4096, 16))
  net_input, _, target = noised_batch(jax.random.PRNGKey(1), x0, SCHEDULES['cosine'], config)
  np.testing.assert_allclose([net_input.std(), target.std()], [1.0, 1.0], rtol=0.02)


def test_edm_with_unit_sigma_data_is_minus_v_prediction():
  x0 = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
  noise = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  alpha, sigma = 0.6, 0.8
  _, target = edm_network_input_and_target(x0, noise, sigma / alpha, sigma_data=1.0)
  np.testing.assert_allclose(target, -regression_target('v', x0, noise, alpha, sigma), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Config fields


def test_config_validation_of_sampler_fields():
  validate_config(base_config())
  c = base_config()
  c.diffusion.preconditioning = 'edm'
  with pytest.raises(ValueError, match="objective='x0'"):
    validate_config(c)
  c.diffusion.objective = 'x0'
  validate_config(c)
  c = base_config()
  c.sample.guidance_interval = (700.0, 100.0)
  with pytest.raises(ValueError, match='guidance_interval'):
    validate_config(c)
  c.sample.guidance_interval = (100.0, 700.0)
  validate_config(c)
  c = base_config()
  c.sample.spacing = 'karras'
  with pytest.raises(ValueError, match="spacing='karras' applies to config.sample.sampler='dpm\\+\\+2m'"):
    validate_config(c)
  c.sample.sampler = 'dpm++2m'
  validate_config(c)
  c.sample.karras_sigma_max = 1e6
  with pytest.raises(ValueError, match='karras_sigma_max=1e\\+06 must lie'):
    validate_config(c)
  c = base_config()
  c.sample.s_churn = 40.0
  with pytest.raises(ValueError, match=r"s_churn=40.0 .*'heun' and 'euler' on VP objectives .*, not 'ddim'"):
    validate_config(c)
  c.sample.sampler = 'heun'
  validate_config(c)
  c.sample.s_tmin, c.sample.s_tmax = 50.0, 0.05
  with pytest.raises(ValueError, match='s_tmin=50.0 must be below config.sample.s_tmax=0.05'):
    validate_config(c)
  c.sample.s_tmin, c.sample.s_tmax, c.sample.s_noise = 0.05, 50.0, 0.0
  with pytest.raises(ValueError, match='s_noise=0.0 must be positive'):
    validate_config(c)
  c = base_config()
  c.diffusion.objective, c.sample.sampler, c.sample.s_churn = 'flow', 'euler', 1.0
  with pytest.raises(ValueError, match="not 'euler' with objective 'flow'"):
    validate_config(c)
  c = base_config()
  c.sample.karras_rho = 0.0
  with pytest.raises(ValueError, match='karras_rho'):
    validate_config(c)
