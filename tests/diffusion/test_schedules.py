import numpy as np
import pytest

from diffusion.schedules import (cosine_alphas_cumprod, linear_alphas_cumprod, linear_betas, sigmas_from_alphas_cumprod,
                                 timestep_spacing)


def test_linear_schedule_values():
  betas = linear_betas()
  assert betas.dtype == np.float32 and betas[0] == np.float32(1e-4) and betas[-1] == np.float32(0.02)
  ac = linear_alphas_cumprod()
  assert ac[0] == pytest.approx(0.9999, rel=1e-6)
  # prod(1 - beta) in closed form via float64 on the same float32 betas
  assert ac[-1] == pytest.approx(np.prod(1 - betas.astype(np.float64)), rel=1e-5)
  assert ac[-1] == pytest.approx(4.0358e-05, rel=1e-3)
  assert np.all(np.diff(ac) < 0)


def test_cosine_schedule_values():
  ac = cosine_alphas_cumprod(1000)
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2)**2
  for t in (0, 250, 500, 900):  # a_t = f(t + 1) / f(0) where no beta is clipped
    assert ac[t] == pytest.approx(f(t + 1) / f(0), rel=1e-5)
  assert ac[-1] < 1e-4 and np.all(np.diff(ac) < 0)


def test_sigmas():
  ac = np.array([0.5, 0.2])
  np.testing.assert_allclose(sigmas_from_alphas_cumprod(ac), [1.0, 2.0])


def test_timestep_spacings():
  np.testing.assert_array_equal(timestep_spacing(1000, 10, 'leading'), np.arange(900, -1, -100))
  np.testing.assert_array_equal(timestep_spacing(1000, 10, 'trailing'), np.arange(999, 0, -100))
  np.testing.assert_array_equal(timestep_spacing(1000, 4, 'linspace'), [999, 666, 333, 0])
  trailing_61 = timestep_spacing(1000, 61, 'trailing')  # arange(1000, 0, -1000 / 61) has 62 elements, the last -1
  assert len(trailing_61) == 61 and list(trailing_61[-2:]) == [32, 15]
  with pytest.raises(ValueError, match='sampling steps'):
    timestep_spacing(1000, 0)


@pytest.mark.parametrize('spacing', ['leading', 'trailing', 'linspace'])
@pytest.mark.parametrize('num_timesteps', [1000, 250, 4000])
def test_every_step_count_gives_that_many_distinct_timesteps_in_range(spacing, num_timesteps):
  for n in range(1, num_timesteps + 1):
    steps = timestep_spacing(num_timesteps, n, spacing)
    assert len(steps) == n and np.all(np.diff(steps) < 0), (n, steps[-3:])
    assert 0 <= steps[-1] and steps[0] <= num_timesteps - 1, (n, steps[[0, -1]])
    if spacing == 'trailing':
      assert steps[0] == num_timesteps - 1
