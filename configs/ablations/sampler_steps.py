"""Sampler x number of steps on one trained quickstart model (sampling only: no training per point).

    python main.py --config=configs/quickstart.py:long --workdir=runs/quickstart_long      # the model, once
    python ablate.py --sweep=configs/ablations/sampler_steps.py --root=runs/ablations --model_workdir=runs/quickstart_long

Every point draws the same 500 class-balanced samples (same noise seed) from the EMA parameters
with the quickstart's guidance 2 and scores them with the digits classifier. `nfe` counts network
calls per sample (Heun: 2 steps - 1); each call runs the conditional and null batch together.
"""
from configs.quickstart import get_config

SAMPLERS = ['ddpm', 'ddim', 'dpm++2m', 'euler', 'heun']


def base():
  c = get_config('long')
  c.sample.num_samples = 500
  c.sample.batch_size = 500
  c.sample.seed = 12345
  c.evals.digits.num_samples = 500
  return c


def get_sweep():
  return {
      'kind':
          'sample',
      'base':
          base(),
      'model_workdir':
          'runs/quickstart_long',
      'model_command':
          'python main.py --config=configs/quickstart.py:long',
      'axes': {
          'sampler': {'sample.sampler': SAMPLERS},
          'steps': {'sample.num_steps': [5, 10, 25]},
      },
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['nfe', 'digits_fd', 'digits_accuracy', 'sampling_seconds'],
      'plots': [{
          'x': 'steps', 'y': ['digits_fd', 'digits_accuracy'], 'series': 'sampler', 'logx': True,
          'file': 'fd_vs_steps.png'
      }, {'x': 'nfe', 'y': 'digits_fd', 'series': 'sampler', 'logx': True, 'file': 'fd_vs_nfe.png'}],
  }
