"""The models of schedule_objective.py sampled without guidance (sampling only; trains missing models first).

    python ablate.py --sweep=configs/ablations/schedule_objective_unguided.py --root=runs/ablations

At the quickstart's guidance 2 every run recognises 100% of its samples and part of each Fréchet distance
is guidance's loss of diversity (docs/ablations.md, section 3); scale 1 compares the models themselves.
Same samplers, steps and 500 samples as schedule_objective's table.
"""
from configs.ablations.schedule_objective import base


def get_sweep():
  return {
      'kind': 'sample',
      'model_sweep': 'configs/ablations/schedule_objective.py',
      'base': base(),
      'axes': {'guidance': {'sample.guidance_scale': [1.0]}},
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['digits_fd', 'digits_accuracy', 'model_step'],
  }
