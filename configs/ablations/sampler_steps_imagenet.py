"""Sampler x number of steps for DiT-XL/2 on ImageNet 256 latents: the full-size twin of sampler_steps.py.

    python main.py --config=configs/dit_xl.py:2 --workdir=runs/dit_xl_2                  # the model, once
    python ablate.py --sweep=configs/ablations/sampler_steps_imagenet.py --root=runs/ablations \
        --model_workdir=runs/dit_xl_2

Sampling only, for accelerators: every point draws the same 10,000 class-balanced samples (one noise
seed) from the EMA parameters with the DiT paper's guidance 1.5, decodes them with the SD-VAE and scores
FID-10K, sFID, Inception Score and precision/recall against the ImageNet reference statistics
(docs/evaluation.md; `--set=sample.num_samples=50000 --set=evals.inception.num_samples=50000` for
FID-50K). The DDIM paper's steps table (Table 1: 10, 20, 50, 100 steps) plus the 250-step DDPM of the
DiT paper.
"""
from configs.ablations.dit_grid_imagenet import base as grid_base
from configs.ablations.sampler_steps import SAMPLERS
from configs.dit import dit_config


def base():
  c = dit_config('XL', 2)
  c.evals = grid_base().evals
  c.sample.num_samples = c.evals.inception.num_samples = 10_000
  c.sample.seed = 12345
  return c


def get_sweep():
  return {
      'kind':
          'sample',
      'base':
          base(),
      'model_workdir':
          'runs/dit_xl_2',
      'model_command':
          'python main.py --config=configs/dit_xl.py:2',
      'axes': {
          'sampler': {'sample.sampler': SAMPLERS},
          'steps': {'sample.num_steps': [10, 20, 50, 100, 250]},
      },
      'metrics': ['fid'],
      'columns': ['nfe', 'fid', 'sfid', 'inception_score', 'precision', 'recall', 'sampling_seconds'],
      'plots': [{'x': 'steps', 'y': 'fid', 'series': 'sampler', 'logx': True, 'logy': True, 'file': 'fid_vs_steps.png'},
                {'x': 'nfe', 'y': 'fid', 'series': 'sampler', 'logx': True, 'logy': True, 'file': 'fid_vs_nfe.png'}],
  }
