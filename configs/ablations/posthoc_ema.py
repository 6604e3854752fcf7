"""EMA width chosen after training (EDM2's post-hoc EMA, training/ema.py) on one quickstart model (sampling only).

    python ablate.py --sweep=configs/ablations/posthoc_ema.py --root=runs/ablations   # trains the model first

The model is the quickstart with two power-function EMAs tracked (sigma_rel 0.05 and 0.10) and snapshotted every
50 steps; each point rebuilds the EMA of one width sigma_rel at the last step from the 30 snapshots and samples it
(DDIM 20 steps, guidance 2, 500 samples, the same noise). Two reference rows: the raw params, and the quickstart's
own EMA (decay 0.999 with warmup). The sweep never retrains: a point costs one reconstruction and one sampling.
"""
from configs.ablations import guidance

WIDTHS = [0.01, 0.02, 0.04, 0.05, 0.07, 0.1, 0.14, 0.2, 0.25]


def base():
  c = guidance.base()  # the quickstart, sampled by DDIM 20 steps with 500 samples
  c.optim.ema_sigma_rels = (0.05, 0.1)
  c.train.ema_snapshot_every = 50
  return c


def get_sweep():
  weights = [{'name': 'params', 'sample.use_ema': False}, {'name': 'ema0.999', 'sample.use_ema': True}]
  weights += [{'name': w, 'sample.ema_sigma_rel': w} for w in WIDTHS]  # numeric names: the plot's x
  return {
      'kind':
          'sample',
      'base':
          base(),
      'model_workdir':
          'runs/quickstart_power_ema',
      'model_command':
          'python main.py --config=configs/quickstart.py:long --config.optim.ema_sigma_rels=0.05,0.1 '
          '--config.train.ema_snapshot_every=50',
      'axes': {'sigma_rel': weights},
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['model_step', 'digits_fd', 'digits_accuracy'],
      'plots': [{
          'x': 'sigma_rel', 'y': ['digits_fd', 'digits_accuracy'], 'file': 'metrics_vs_sigma_rel.png',
          'xlabel': 'EMA width sigma_rel (post hoc)'
      }],
  }
