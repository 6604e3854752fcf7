"""Every sampler against the diffusers scheduler that users know it by, step for step on the same model.

The model is a fixed smooth function of (x, t) written once for jax and once for torch, so any difference
is in the schedule, the timesteps, the noise levels or the update. Stochastic samplers (DDPM, DDIM with
eta = 1) get our noise handed to diffusers. Runs where torch and diffusers are installed (CI installs them).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.dpm_solver import dpm_solver_2m_sample, dpm_solver_karras, dpm_solver_timesteps
from diffusion.flow_samplers import flow_sample, flow_times
from diffusion.karras import karras_sample, schedule_karras_sigmas
from diffusion.samplers import ddim_sample, ddpm_sample
from diffusion.schedules import cosine_alphas_cumprod, linear_alphas_cumprod, timestep_at_sigma, timestep_spacing

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

SCHEDULES = {'linear': (linear_alphas_cumprod(), 'linear'), 'cosine': (cosine_alphas_cumprod(), 'squaredcos_cap_v2')}
PREDICTION_TYPES = {'eps': 'epsilon', 'x0': 'sample', 'v': 'v_prediction'}
SHAPE = (2, 6, 6, 3)


def initial_noise():
  return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def jax_model(x, t):
  t = t.reshape(-1, 1, 1, 1)
  return 0.8 * jnp.tanh(x) * (1 + 0.3 * jnp.cos(t / 300.0)) + 0.05 * jnp.sin(t / 97.0)


def torch_model(x, t):
  t = torch.as_tensor(t, dtype=torch.float32)
  return 0.8 * torch.tanh(x) * (1 + 0.3 * torch.cos(t / 300.0)) + 0.05 * torch.sin(t / 97.0)


def run_diffusers(scheduler, x, noises=None, **step_kwargs):
  """The usual diffusers loop; `noises` (one array per step) is passed as DDIM's variance_noise."""
  x = torch.from_numpy(x) * getattr(scheduler, 'init_noise_sigma', 1.0)
  for i, t in enumerate(scheduler.timesteps):
    kwargs = dict(step_kwargs)
    if noises is not None:
      kwargs['variance_noise'] = torch.from_numpy(noises[i].copy())
    model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, 'scale_model_input') else x
    output = torch_model(model_input, t)
    x = scheduler.step(output, t, x, **kwargs).prev_sample
  return x.numpy()


def our_noises(rng, n):
  """The noise our DDPM and DDIM loops draw at step i: normal(fold_in(rng, i))."""
  return [np.asarray(jax.random.normal(jax.random.fold_in(rng, i), SHAPE, jnp.float32)) for i in range(n)]


def assert_close(ours, theirs, tol=2e-5):
  err = np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max()
  assert err < tol, f'max error {err:.2g} of the largest value (tolerance {tol:g})'


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
@pytest.mark.parametrize('objective', ['eps', 'x0', 'v'])
@pytest.mark.parametrize('spacing,num_steps', [('leading', 10), ('trailing', 25)])
def test_ddim_matches_diffusers_ddim_scheduler(schedule, objective, spacing, num_steps):
  alphas_cumprod, beta_schedule = SCHEDULES[schedule]
  scheduler = diffusers.DDIMScheduler(beta_schedule=beta_schedule, prediction_type=PREDICTION_TYPES[objective],
                                      clip_sample=True, set_alpha_to_one=True, timestep_spacing=spacing)
  scheduler.set_timesteps(num_steps)
  timesteps = timestep_spacing(1000, num_steps, spacing)
  np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps)
  theirs = run_diffusers(scheduler, initial_noise(), eta=0.0, use_clipped_model_output=True)
  ours = ddim_sample(jax_model, jnp.asarray(initial_noise()), alphas_cumprod, timesteps, objective, eta=0.0,
                     clip_denoised=True)
  assert_close(ours, theirs)


def test_ddim_eta_one_matches_diffusers_with_the_same_noise():
  scheduler = diffusers.DDIMScheduler(beta_schedule='linear', clip_sample=True, set_alpha_to_one=True)
  scheduler.set_timesteps(20)
  rng = jax.random.PRNGKey(7)
  theirs = run_diffusers(scheduler, initial_noise(), our_noises(rng, 20), eta=1.0, use_clipped_model_output=True)
  ours = ddim_sample(jax_model, jnp.asarray(initial_noise()), linear_alphas_cumprod(), timestep_spacing(1000, 20),
                     'eps', eta=1.0, rng=rng, clip_denoised=True)
  assert_close(ours, theirs)


@pytest.mark.parametrize('variance,variance_type', [('posterior', 'fixed_small'), ('beta', 'fixed_large')])
@pytest.mark.parametrize('objective', ['eps', 'v'])
def test_ddpm_matches_diffusers_ddpm_scheduler_with_the_same_noise(monkeypatch, variance, variance_type, objective):
  num_steps, rng = 20, jax.random.PRNGKey(3)
  noises = iter(our_noises(rng, num_steps))  # diffusers draws none on the last step, t = 0, nor do we use one
  monkeypatch.setattr('diffusers.schedulers.scheduling_ddpm.randn_tensor',
                      lambda *args, **kwargs: torch.from_numpy(next(noises)))
  scheduler = diffusers.DDPMScheduler(beta_schedule='linear', variance_type=variance_type, clip_sample=True,
                                      prediction_type=PREDICTION_TYPES[objective])
  scheduler.set_timesteps(num_steps)
  timesteps = timestep_spacing(1000, num_steps, 'leading')
  np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps)
  theirs = run_diffusers(scheduler, initial_noise())
  ours = ddpm_sample(jax_model, jnp.asarray(initial_noise()), linear_alphas_cumprod(), timesteps, objective, rng,
                     variance, clip_denoised=True)
  assert_close(ours, theirs)


def dpm_scheduler(beta_schedule, objective, spacing, **overrides):
  kwargs = dict(beta_schedule=beta_schedule, prediction_type=PREDICTION_TYPES[objective], algorithm_type='dpmsolver++',
                solver_order=2, solver_type='midpoint', lower_order_final=False, final_sigmas_type='sigma_min',
                timestep_spacing=spacing)
  return diffusers.DPMSolverMultistepScheduler(**{**kwargs, **overrides})


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
@pytest.mark.parametrize('objective', ['eps', 'x0', 'v'])
@pytest.mark.parametrize('spacing,num_steps', [('linspace', 10), ('leading', 15), ('trailing', 20)])
def test_dpm_solver_2m_matches_diffusers_multistep_scheduler(schedule, objective, spacing, num_steps):
  alphas_cumprod, beta_schedule = SCHEDULES[schedule]
  scheduler = dpm_scheduler(beta_schedule, objective, spacing)
  scheduler.set_timesteps(num_steps)
  timesteps = dpm_solver_timesteps(1000, num_steps, spacing)
  np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps)
  theirs = run_diffusers(scheduler, initial_noise())
  ours = dpm_solver_2m_sample(jax_model, jnp.asarray(initial_noise()), alphas_cumprod, timesteps, objective)
  assert_close(ours, theirs)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
@pytest.mark.parametrize('objective', ['eps', 'v'])
@pytest.mark.parametrize('num_steps', [10, 25])
def test_dpm_solver_2m_karras_matches_diffusers_with_karras_sigmas(schedule, objective, num_steps):
  """DPM++ 2M Karras: diffusers' levels and update. Its timesteps are ours made integers (rounded, or truncated on
  the cosine schedule); k-diffusion and we call the network at the fractional timestep of each level, so the
  loop runs on our timesteps."""
  alphas_cumprod, beta_schedule = SCHEDULES[schedule]
  scheduler = dpm_scheduler(beta_schedule, objective, 'linspace', use_karras_sigmas=True, final_sigmas_type='zero')
  scheduler.set_timesteps(num_steps)
  timesteps, levels = dpm_solver_karras(alphas_cumprod, num_steps)
  np.testing.assert_allclose(scheduler.sigmas.numpy(), levels, rtol=1e-5)  # their schedule: a float32 cumprod
  if schedule == 'linear':
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), np.round(timesteps))
  else:
    assert np.all(np.abs(scheduler.timesteps.numpy() - timesteps) < 1.001)
  scheduler.timesteps = torch.from_numpy(np.asarray(timesteps, np.float32))
  theirs = run_diffusers(scheduler, initial_noise())
  ours = dpm_solver_2m_sample(jax_model, jnp.asarray(initial_noise()), alphas_cumprod, timesteps, objective,
                              levels=levels)
  assert_close(ours, theirs)


def test_the_dpm_tolerance_tells_a_first_order_last_step_apart():
  """The same comparison with diffusers' lower-order final step differs by far more than the tolerance."""
  scheduler = dpm_scheduler('linear', 'eps', 'linspace', lower_order_final=True)
  scheduler.set_timesteps(10)
  theirs = run_diffusers(scheduler, initial_noise())
  ours = dpm_solver_2m_sample(jax_model, jnp.asarray(initial_noise()), linear_alphas_cumprod(),
                              dpm_solver_timesteps(1000, 10), 'eps')
  with pytest.raises(AssertionError, match='max error 0.00048'):
    assert_close(ours, theirs)


@pytest.mark.parametrize('order,scheduler_cls', [(1, 'EulerDiscreteScheduler'), (2, 'HeunDiscreteScheduler')])
@pytest.mark.parametrize('objective', ['eps', 'x0', 'v'])
@pytest.mark.parametrize('num_steps', [8, 30])
def test_karras_euler_and_heun_match_diffusers_with_karras_sigmas(order, scheduler_cls, objective, num_steps):
  scheduler = getattr(diffusers, scheduler_cls)(beta_start=1e-4, beta_end=0.02, beta_schedule='linear',
                                                prediction_type=PREDICTION_TYPES[objective], use_karras_sigmas=True)
  scheduler.set_timesteps(num_steps)
  assert len(scheduler.timesteps) == order * num_steps - (order - 1)  # network calls: ours are the same
  sigmas = schedule_karras_sigmas(linear_alphas_cumprod(), num_steps)
  levels = scheduler.sigmas.numpy()
  levels = np.append(levels[:-1:2], 0.0) if order == 2 else levels  # Heun lists each level but the ends twice
  np.testing.assert_allclose(levels, sigmas, rtol=1e-6)
  np.testing.assert_allclose(scheduler.timesteps.numpy()[::order],
                             timestep_at_sigma(linear_alphas_cumprod(), sigmas[:-1]), atol=1e-3)
  theirs = run_diffusers(scheduler, initial_noise())
  ours = karras_sample(jax_model, jnp.asarray(initial_noise()), linear_alphas_cumprod(), num_steps, objective,
                       order=order)
  # The loop runs in the VE scale, x up to sigma_max = 157 times the noise: float32 cancellation in x - sigma eps
  # gives both implementations errors of about 157 * 2^-24 per step.
  assert_close(ours, theirs, tol=1e-4)


@pytest.mark.parametrize('shift', [1.0, 3.0])
@pytest.mark.parametrize('num_steps', [10, 28])
def test_flow_euler_matches_diffusers_flow_match_euler(shift, num_steps):
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])  # diffusers shifts them as we do
  np.testing.assert_allclose(scheduler.sigmas.numpy(), flow_times(num_steps, shift), rtol=1e-6, atol=1e-7)
  theirs = run_diffusers(scheduler, initial_noise())
  ours = flow_sample(jax_model, jnp.asarray(initial_noise()), num_steps, order=1, shift=shift)
  assert_close(ours, theirs)


def heun_layout(levels):
  """diffusers' Heun schedulers list each level between the ends twice (a first- and a second-order call)."""
  levels = torch.as_tensor(np.asarray(levels, np.float32))
  timesteps = torch.cat([levels[:1], levels[1:-1].repeat_interleave(2)]) * 1000
  return timesteps, torch.cat([levels[:1], levels[1:-1].repeat_interleave(2), levels[-1:]])


@pytest.mark.parametrize('shift', [1.0, 3.0])
@pytest.mark.parametrize('num_steps', [10, 28])
def test_flow_heun_matches_diffusers_flow_match_heun(shift, num_steps):
  scheduler = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
  # Its set_timesteps takes no grid: its own runs from t = 1 to 1/1000 and then to 0. Check that heun_layout
  # rebuilds its layout from its levels, then give it ours (1 to 0) in that layout.
  scheduler.set_timesteps(num_steps)
  their_levels = np.append(scheduler.sigmas.numpy()[:-1:2], 0.0)
  for built, theirs in zip(heun_layout(their_levels), (scheduler.timesteps, scheduler.sigmas)):
    np.testing.assert_allclose(built.numpy(), theirs.numpy(), rtol=1e-6)
  scheduler.timesteps, scheduler.sigmas = heun_layout(flow_times(num_steps, shift))
  theirs = run_diffusers(scheduler, initial_noise())
  ours = flow_sample(jax_model, jnp.asarray(initial_noise()), num_steps, order=2, shift=shift)
  assert_close(ours, theirs)
