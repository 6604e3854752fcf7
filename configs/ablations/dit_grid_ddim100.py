"""The models of dit_grid.py sampled without guidance by DDIM with 100 steps instead of 20 (sampling only).

    python ablate.py --sweep=configs/ablations/dit_grid_ddim100.py --root=runs/ablations

A check on dit_grid's table: does the size x patch ordering come from the models, or from the
sampler's 20-step discretisation error? Same 500 samples (one noise seed), same scoring.
"""
from configs.ablations.dit_grid import base


def get_sweep():
  config = base()
  config.sample.num_steps = 100
  return {
      'kind':
          'sample',
      'model_sweep':
          'configs/ablations/dit_grid.py',
      'base':
          config,
      'axes': {'guidance': {'sample.guidance_scale': [1.0]}},
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['params_m', 'gflops', 'digits_fd', 'digits_accuracy', 'model_step'],
      'plots': [{
          'x': 'gflops', 'y': 'digits_fd', 'series': 'size', 'annotate': 'patch', 'logx': True, 'logy': True,
          'xlabel': 'forward Gflops per image (multiply-adds)', 'file': 'fd_vs_gflops.png'
      }],
  }
