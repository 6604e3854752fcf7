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
