import numpy as np
import pytest

from diffusion.schedules import (cosine_alphas_cumprod, linear_alphas_cumprod, linear_betas,
                                 sigmas_from_alphas_cumprod, timestep_spacing)


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
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
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
  with pytest.raises(ValueError, match='sampling steps'):
    timestep_spacing(1000, 0)
