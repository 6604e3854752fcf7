"""The embedded digits, read from the file scikit-learn ships without importing scikit-learn."""
import importlib.util

import numpy as np
import pytest

from input_pipeline import sources


def test_the_digits_equal_scikit_learns_loader():
  from sklearn.datasets import load_digits as reference
  images, labels = sources.load_digits()
  digits = reference()
  np.testing.assert_array_equal(images, digits.images)
  np.testing.assert_array_equal(labels, digits.target)
  assert images.shape == (1797, 8, 8) and np.bincount(labels).tolist()[:3] == [178, 182, 177]
  source = sources.digits_source(8, 3)
  batch = source.get(np.array([0, 1796]))
  assert batch['image'].shape == (2, 8, 8, 3) and batch['image'].min() == -1.0 and batch['image'].max() == 1.0
  np.testing.assert_array_equal(batch['label'], digits.target[[0, 1796]])


def test_without_scikit_learn_the_error_says_what_to_install(monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(sources.importlib.util, 'find_spec', lambda name, *a: None
                      if name == 'sklearn' else real_find_spec(name, *a))
  with pytest.raises(ModuleNotFoundError, match='ships with scikit-learn: pip install -r requirements.txt'):
    sources.load_digits()
