"""Fréchet distance between Gaussians fitted to feature sets (FID and friends).

FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace of the matrix square root is taken
from the eigenvalues of sqrt(S1) S2 sqrt(S1), which is symmetric positive semi-definite, so no
non-symmetric `sqrtm` (whose `disp` argument scipy 1.18 removed) is needed. All in float64.
"""
import numpy as np


def feature_statistics(features):
  """Mean and covariance (rows are samples, unbiased) of a [N, D] feature array, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'need a [N, D] feature array with N >= 2, got shape {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix):
  """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues clipped)."""
  eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'statistics do not match: mu {mu1.shape} vs {mu2.shape}, '
                     f'sigma {sigma1.shape} vs {sigma2.shape}')
  root1 = _sqrt_psd(sigma1)
  inner = root1 @ sigma2 @ root1
  eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eigvals, 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def frechet_distance_from_features(features1, features2):
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


class RunningFeatureStatistics:
  """Mean and unbiased covariance of feature rows added a batch at a time (datasets too big for memory).

  Sums are float64 and taken about the first batch's mean, so the covariance does not lose digits to a
  large common offset; the result equals `feature_statistics` of all rows to rounding.
  """
  def __init__(self):
    self.count, self.shift, self.total, self.outer = 0, None, None, None

  def add(self, features):
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f'need a [N, D] feature array, got shape {x.shape}')
    if self.shift is None:
      self.shift = x.mean(axis=0)
      self.total, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
    x = x - self.shift
    self.count += len(x)
    self.total += x.sum(axis=0)
    self.outer += x.T @ x

  def mean_and_covariance(self):
    if self.count < 2:
      raise ValueError(f'need at least 2 feature rows, got {self.count}')
    mean = self.total / self.count
    covariance = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
    return self.shift + mean, covariance
