"""dit_grid.py again with training seeds 1 and 2 (dit_grid's runs are seed 0): the spread of each grid point.

    python ablate.py --sweep=configs/ablations/dit_grid_seeds.py --root=runs/ablations

The seed sets the initial weights, the data order, the timesteps, noise and label dropout of training; the 500
evaluation samples keep their fixed noise seed (evals.digits.seed), so the spread is that of training alone. With
dit_grid's seed 0 this gives three runs per size x patch point (docs/ablations.md).
"""
from configs.ablations.dit_grid import get_sweep as grid_sweep


def get_sweep():
  sweep = grid_sweep()
  sweep['axes'] = {**sweep['axes'], 'seed': {'seed': [1, 2]}}
  sweep['columns'] = ['params_m', 'gflops', 'digits_fd', 'digits_accuracy', 'loss', 'steps_per_second']
  sweep['plots'] = []
  return sweep
