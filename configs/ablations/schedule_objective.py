"""Noise schedule x training objective on the quickstart U-Net (each run trains: 5 quickstarts).

    python ablate.py --sweep=configs/ablations/schedule_objective.py --root=runs/ablations

linear vs cosine betas x eps vs v vs flow (rectified-flow velocity, sampled with Euler on flow
times: the beta schedule does not apply, so flow runs once, under schedule=linear). The VP
objectives sample with DDIM. Everything else is the quickstart: 1500 steps, guidance 2, 50 steps.
Scored with 500 samples per run.
"""
import ml_collections

from configs.quickstart import get_config


def base():
  c = get_config('long')
  c.train.sample_every = 0
  c.train.sample_grid = 0
  c.evals.digits = ml_collections.ConfigDict({'every_steps': 0, 'num_samples': 500, 'seed': 12345})
  return c


def get_sweep():
  return {
      'kind': 'train',
      'base': base(),
      'axes': {
          'schedule': {'diffusion.schedule': ['linear', 'cosine']},
          'objective': [{'name': 'eps', 'diffusion.objective': 'eps',
                         'sample.sampler': 'ddim'}, {'name': 'v', 'diffusion.objective': 'v', 'sample.sampler': 'ddim'},
                        {'name': 'flow', 'diffusion.objective': 'flow', 'sample.sampler': 'euler'}],
      },
      'exclude': [{'schedule': 'cosine', 'objective': 'flow'}],
      'metrics': ['digits_fd', 'digits_accuracy', 'loss'],
      'columns': ['digits_fd', 'digits_accuracy', 'loss', 'train_seconds'],
  }
