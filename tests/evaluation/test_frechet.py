"""Fréchet distance: closed forms, a scipy.linalg.sqrtm reference, and input checks."""
import numpy as np
import pytest
import scipy.linalg

from evaluation.frechet import feature_statistics, frechet_distance, frechet_distance_from_features


def _random_psd(rng, dim, rank=None):
  a = rng.standard_normal((dim, rank or dim))
  return a @ a.T / dim


def _sqrtm_reference(mu1, sigma1, mu2, sigma2):
  """The classic pytorch-fid / TTUR formula, via the (non-symmetric) scipy matrix square root."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def test_equal_covariances_give_squared_mean_distance():
  rng = np.random.default_rng(0)
  mu1, mu2, sigma = rng.standard_normal(16), rng.standard_normal(16), _random_psd(rng, 16)
  np.testing.assert_allclose(frechet_distance(mu1, sigma, mu2, sigma), np.sum((mu1 - mu2)**2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('a, b, dim', [(1.0, 2.0, 8), (0.5, 3.0, 64), (2.0, 2.0, 5)])
def test_isotropic_covariances(a, b, dim):
  mu = np.zeros(dim)
  fd = frechet_distance(mu, a**2 * np.eye(dim), mu, b**2 * np.eye(dim))
  np.testing.assert_allclose(fd, dim * (a - b)**2, rtol=1e-12, atol=1e-12)


def test_isotropic_plus_mean_shift():
  dim = 10
  mu1, mu2 = np.zeros(dim), np.full(dim, 0.5)
  fd = frechet_distance(mu1, 4.0 * np.eye(dim), mu2, 1.0 * np.eye(dim))
  np.testing.assert_allclose(fd, dim * 0.25 + dim * (2.0 - 1.0)**2, rtol=1e-12)


def test_feature_set_against_itself_is_zero():
  features = np.random.default_rng(1).standard_normal((500, 64)) * 3 + 1
  assert abs(frechet_distance_from_features(features, features)) < 1e-6


@pytest.mark.parametrize('dim, rank', [(8, None), (32, None), (64, 16)])
def test_matches_scipy_sqrtm_reference(dim, rank):
  rng = np.random.default_rng(dim)
  mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
  sigma1, sigma2 = _random_psd(rng, dim, rank), _random_psd(rng, dim)
  expected = _sqrtm_reference(mu1, sigma1, mu2, sigma2)
  np.testing.assert_allclose(frechet_distance(mu1, sigma1, mu2, sigma2), expected, rtol=1e-6)


def test_symmetric_in_its_arguments():
  rng = np.random.default_rng(3)
  s1, s2 = _random_psd(rng, 12), _random_psd(rng, 12)
  m1, m2 = rng.standard_normal(12), rng.standard_normal(12)
  np.testing.assert_allclose(frechet_distance(m1, s1, m2, s2), frechet_distance(m2, s2, m1, s1), rtol=1e-9)


def test_feature_statistics_are_mean_and_unbiased_covariance():
  features = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
  mu, sigma = feature_statistics(features)
  np.testing.assert_allclose(mu, [2.0, 4.0])
  np.testing.assert_allclose(sigma, [[4.0, 7.0], [7.0, 13.0]])


def test_rejects_mismatched_statistics():
  with pytest.raises(ValueError, match='do not match'):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='N >= 2'):
    feature_statistics(np.zeros((1, 5)))
