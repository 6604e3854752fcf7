"""Evaluators: `config.evals.<name>` picks one; each maps uint8 NHWC samples (+ labels) to metrics."""
from evaluation.digits import DigitsEvaluator

EVALUATORS = {'digits': DigitsEvaluator}


def create_evaluator(name, config, eval_config):
  if name not in EVALUATORS:
    raise ValueError(f'config.evals.{name}: unknown evaluator; choose from {", ".join(EVALUATORS)}')
  return EVALUATORS[name](config, eval_config)
