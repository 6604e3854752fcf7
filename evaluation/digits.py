"""Scoring samples of the embedded digits dataset with a small classifier trained on it.

An MLP (64 -> 128 ReLU -> 10) fitted to scikit-learn's 1,797 8x8 digits in about a second gives
two numbers for class-conditional samples: the fraction recognised as their intended class, and
the Fréchet distance between the hidden-layer features of the samples and of the real digits
(an FID whose feature network knows digits). Beside it, `digits_fd_real`: the same distance for as many real
digits (a fixed random subset), the floor that a finite sample reaches at best (about 0.08 for 1,000).
"""
import functools
import logging

import numpy as np

from evaluation.frechet import feature_statistics, frechet_distance
from input_pipeline.sources import load_digits


@functools.lru_cache(maxsize=1)
def digits_classifier():
  """The fitted classifier and the (mu, sigma) of its features on all real digits; cached per process."""
  from sklearn.neural_network import MLPClassifier
  images, labels = load_digits()
  x = images.reshape(-1, 64) / 16.0
  clf = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=1000, random_state=0)
  clf.fit(x, labels)
  return clf, feature_statistics(hidden_features(clf, x))


def hidden_features(clf, x):
  return np.maximum(x @ clf.coefs_[0] + clf.intercepts_[0], 0.0)


def to_digit_inputs(images_uint8):
  """uint8 [N, H, W, C] samples -> [N, 64] in [0, 1], area-downscaled to 8x8 and grey."""
  from PIL import Image
  images = np.asarray(images_uint8)
  if images.shape[-1] == 3:
    images = images.mean(axis=-1, keepdims=True)
  images = images[..., 0].astype(np.float32)
  if images.shape[1:] != (8, 8):
    images = np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.BOX)) for im in images])
  return images.reshape(len(images), 64) / 255.0


@functools.lru_cache(maxsize=8)
def real_digits_fd(count, seed=0):
  """The Fréchet distance of `count` real digits (a fixed random subset; drawn with replacement beyond the 1,797)
  to all of them: the floor of `digits_fd` at that sample size."""
  clf, (mu_real, sigma_real) = digits_classifier()
  x = load_digits()[0].reshape(-1, 64) / 16.0
  chosen = np.random.default_rng(seed).choice(len(x), count, replace=count > len(x))
  mu, sigma = feature_statistics(hidden_features(clf, x[chosen]))
  return frechet_distance(mu, sigma, mu_real, sigma_real)


def digits_metrics(images_uint8, labels):
  """{'digits_accuracy': fraction classified as `labels`, 'digits_fd': Fréchet distance to real digits,
  'digits_fd_real': that of as many real digits, the floor}."""
  clf, (mu_real, sigma_real) = digits_classifier()
  x = to_digit_inputs(images_uint8)
  predicted = clf.predict(x)
  mu, sigma = feature_statistics(hidden_features(clf, x))
  return {
      'digits_accuracy': float(np.mean(predicted == np.asarray(labels))),
      'digits_fd': frechet_distance(mu, sigma, mu_real, sigma_real),
      'digits_fd_real': real_digits_fd(len(x)),
  }


class DigitsEvaluator:
  """Evaluator for class-conditional (or classifier-guided) models of data.source='digits' (any resolution, 1 or 3
  channels)."""
  def __init__(self, config, eval_config):
    if config.data.source != 'digits':
      raise ValueError("evaluator 'digits' scores samples of the embedded digits dataset; "
                       f"config.data.source is {config.data.source!r}")
    if config.data.num_classes != 10 and not config.sample.classifier_workdir:
      raise ValueError(
          "evaluator 'digits' needs the 10 digit labels: a class-conditional model "
          '(config.data.num_classes=10) or a digit classifier guiding it (config.sample.classifier_workdir)')

  def __call__(self, images_uint8, cond):
    if 'y' not in cond:
      raise ValueError("evaluator 'digits' needs the labels the samples were drawn for (cond['y']; arr_1 of "
                       'an npz of samples)')
    metrics = digits_metrics(images_uint8, cond['y'])
    logging.info('digits: %.1f%% of %d samples recognised as their class; Fréchet distance %.3f (%d real digits: %.3f)',
                 100 * metrics['digits_accuracy'], len(images_uint8), metrics['digits_fd'], len(images_uint8),
                 metrics['digits_fd_real'])
    return metrics
