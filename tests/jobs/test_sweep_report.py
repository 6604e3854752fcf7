"""Curves of a train sweep: a metric against the training step, averaged over seeds, and the steps to reach a
reference's final value, from the runs' metrics.jsonl."""
import json
import os

import pytest

from jobs import sweep_report, sweeps

SWEEP = '''
import ml_collections
from tests.tiny import tiny_unet_config


def get_sweep():
  return {
      'kind': 'train', 'base': tiny_unet_config(),
      'axes': {'variant': [{'name': 'base'}, {'name': 'fast', 'optim.learning_rate': 2e-3}], 'seed': {'seed': [0, 1]}},
      'metrics': ['digits_fd'],
      'curves': [{'y': 'digits_fd', 'series': 'variant', 'over': 'seed', 'reference': 'base'}],
  }
'''

# variant -> seed -> {step: digits_fd}
HISTORIES = {
    'base': {0: {100: 3.0, 200: 2.0, 300: 1.0}, 1: {100: 5.0, 200: 4.0, 300: 3.0}},
    'fast': {0: {100: 2.0, 200: 1.5, 300: 0.5}, 1: {100: 3.0, 200: 2.5, 300: 1.5}},
}


def test_curve_statistics_and_steps_to_reach():
  stats = sweep_report.curve_statistics([HISTORIES['base'][0], HISTORIES['base'][1], {100: 1.0, 300: 2.0}])
  assert [s for s, _, _, _ in stats] == [100, 300]  # the steps every run evaluated
  assert stats[0][1] == pytest.approx(3.0) and stats[0][2] == pytest.approx(2.0) and stats[0][3] == 3
  fast = sweep_report.curve_statistics(list(HISTORIES['fast'].values()))
  assert sweep_report.steps_to_reach(fast, 2.0) == 200  # means 2.5, 2.0, 1.0
  assert sweep_report.steps_to_reach(fast, 0.5) is None
  assert sweep_report.steps_to_reach(fast, 2.4, lower_is_better=False) == 100


def test_write_curves_from_metrics_files(tmp_path):
  path = tmp_path / 'recipe.py'
  path.write_text(SWEEP)
  sweep = sweeps.load_sweep(str(path))
  root = str(tmp_path / 'runs')
  for run in sweeps.expand(sweep):
    os.makedirs(sweeps.run_dir(root, sweep, run))
    with open(os.path.join(sweeps.run_dir(root, sweep, run), 'metrics.jsonl'), 'w') as f:
      for step, value in HISTORIES[run.settings['variant']][run.values['seed']].items():
        f.write(
            json.dumps({'step': step, 'loss': 0.1}) + '\n' + json.dumps({'step': step, 'eval/digits_fd': value}) + '\n')
  rows, done = sweep_report.collect(sweep, root)
  assert done == 0 and len(rows) == 4
  md, png = sweep_report.write_curves(sweep, root, rows, str(tmp_path))
  assert os.path.getsize(png) > 0
  lines = open(md).read().splitlines()
  base = next(l for l in lines if l.startswith('| base '))
  fast = next(l for l in lines if l.startswith('| fast '))
  # base ends at mean 2.0 (seeds 1.0 and 3.0); fast's means are 2.5, 2.0, 1.0: it reaches 2.0 at step 200
  assert base.split(' | ')[1:4] == ['2', '2', '300'] and fast.split(' | ')[1:4] == ['2', '1', '200']
  assert '2.000 ± 1.414' in base
