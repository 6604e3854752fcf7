"""Loss weighting x training objective on the quickstart U-Net (each run trains: 4 quickstarts).

    python ablate.py --sweep=configs/ablations/loss_weighting.py --root=runs/ablations

DDPM's uniform L_simple against Min-SNR-gamma (Hang et al., 2023; gamma 5, the paper's) for the eps and x0
objectives on the linear schedule, sampled with DDIM 50 at guidance 2. Min-SNR gives every objective the x0-space
weight min(SNR, 5) (diffusion/objectives.py): eps-prediction loses weight at low noise, x0-prediction at all but
the highest noise. Everything else is the quickstart; scored with 500 samples per run, as schedule_objective.py.
"""
from configs.ablations.schedule_objective import base


def get_sweep():
  return {
      'kind': 'train',
      'base': base(),
      'axes': {
          'objective': {'diffusion.objective': ['eps', 'x0']},
          'weighting': {'diffusion.loss_weighting': ['uniform', 'min_snr']},
      },
      'metrics': ['digits_fd', 'digits_accuracy', 'loss'],
      'columns': ['digits_fd', 'digits_accuracy', 'loss', 'train_seconds'],
  }
