"""The models of dit_grid.py sampled with classifier-free guidance 2 (sampling only; trains missing models first).

    python ablate.py --sweep=configs/ablations/dit_grid_guided.py --root=runs/ablations

Guidance 2, the quickstart's, shows the same size x patch comparison on class fidelity as well as on
the Fréchet distance (docs/ablations.md). Same 500 samples, DDIM 20 steps as the unguided scores in
dit_grid's table.
"""
from configs.ablations.dit_grid import base


def get_sweep():
  return {
      'kind':
          'sample',
      'model_sweep':
          'configs/ablations/dit_grid.py',
      'base':
          base(),
      'axes': {'guidance': {'sample.guidance_scale': [2.0]}},
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['params_m', 'gflops', 'digits_fd', 'digits_accuracy', 'model_step'],
      'plots': [{
          'x': 'gflops', 'y': ['digits_fd', 'digits_accuracy'], 'series': 'size', 'annotate': 'patch', 'logx': True,
          'xlabel': 'forward Gflops per image (multiply-adds)', 'file': 'fd_vs_gflops.png'
      }],
  }
