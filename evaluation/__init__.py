"""Evaluators: `config.evals.<name>` picks one; each maps uint8 NHWC samples (+ their conditions) to metrics.

An evaluator is built once per run as `EVALUATORS[name](config, eval_config)` (missing weight or reference
files fail here, before any training or sampling) and then called as `evaluator(images, cond)` with
`images` uint8 [N, H, W, C] (C = 1 or 3) and `cond` the dict of numpy arrays the samples were generated
from: `cond['y']` the class labels of class-conditional models, `cond['prompts']` the captions (numpy str
array [N]) of text-conditional ones. It returns {metric name: float}.
"""
from evaluation.clip_score import CLIPScoreEvaluator
from evaluation.digits import DigitsEvaluator
from evaluation.inception import PREPROCESSING
from evaluation.inception_metrics import InceptionEvaluator

EVALUATORS = {
    'digits': DigitsEvaluator,  # the digit classifier's accuracy and Fréchet distance
    'inception': InceptionEvaluator,  # FID, sFID, Inception Score, precision/recall
    'clip_score': CLIPScoreEvaluator,  # CLIP score of text-conditional samples
}

# The fields of config.evals.<name>: when and on how many samples it runs (jobs/train.py), then its own settings.
COMMON_FIELDS = ('every_steps', 'num_samples', 'seed')
FIELDS = {
    'digits': (),
    'inception':
        ('inception_weights', 'reference_npz', 'batch_size', 'precision_recall', 'k', 'is_splits', 'preprocessing'),
    'clip_score': ('clip_weights', 'vocab', 'batch_size'),
}


def check_eval_config(name, eval_config):
  """Raises an error naming the field unless config.evals.<name> is a known evaluator with known fields."""
  if name not in EVALUATORS:
    raise ValueError(f'config.evals.{name}: unknown evaluator; choose from {", ".join(EVALUATORS)}')
  allowed = COMMON_FIELDS + FIELDS.get(name, ())
  unknown = sorted(set(eval_config) - set(allowed))
  if unknown and name in FIELDS:  # an evaluator registered from elsewhere declares no fields
    raise ValueError(f'config.evals.{name} has unknown fields {unknown}; {name!r} takes {", ".join(allowed)}')
  if eval_config.get('every_steps', 0) < 0 or eval_config.get('num_samples', 1) <= 0:
    raise ValueError(f'config.evals.{name}: every_steps must be >= 0 and num_samples > 0')
  if eval_config.get('preprocessing', PREPROCESSING[0]) not in PREPROCESSING:
    raise ValueError(f'config.evals.{name}.preprocessing={eval_config.preprocessing!r}: choose one of '
                     f'{", ".join(PREPROCESSING)} (docs/evaluation.md)')


def create_evaluator(name, config, eval_config):
  check_eval_config(name, eval_config)
  return EVALUATORS[name](config, eval_config)
