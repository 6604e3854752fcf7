"""Evaluators: `config.evals.<name>` picks one; each maps uint8 NHWC samples (+ their conditions) to metrics.

An evaluator is built once per run as `EVALUATORS[name](config, eval_config)` (missing weight or reference
files fail here, before any training or sampling) and then called as `evaluator(images, cond)` with
`images` uint8 [N, H, W, C] (C = 1 or 3) and `cond` the dict of numpy arrays the samples were generated
from: `cond['y']` the class labels of class-conditional models, `cond['prompts']` the captions (numpy str
array [N]) of text-conditional ones. It returns {metric name: float}.

The heavy evaluators (Inception, CLIP) are imported when one is built, not when this registry is.
"""
from evaluation.digits import DigitsEvaluator


def inception_evaluator(config, eval_config):
  """FID, Inception Score and precision/recall; see evaluation.inception_metrics.InceptionEvaluator."""
  from evaluation.inception_metrics import InceptionEvaluator  # pylint: disable=import-outside-toplevel
  return InceptionEvaluator(config, eval_config)


def clip_score_evaluator(config, eval_config):
  """CLIP score of text-conditional samples; see evaluation.clip_score.CLIPScoreEvaluator."""
  from evaluation.clip_score import CLIPScoreEvaluator  # pylint: disable=import-outside-toplevel
  return CLIPScoreEvaluator(config, eval_config)


EVALUATORS = {
    'digits': DigitsEvaluator,
    'inception': inception_evaluator,
    'clip_score': clip_score_evaluator,
}


def create_evaluator(name, config, eval_config):
  if name not in EVALUATORS:
    raise ValueError(f'config.evals.{name}: unknown evaluator; choose from {", ".join(EVALUATORS)}')
  return EVALUATORS[name](config, eval_config)
