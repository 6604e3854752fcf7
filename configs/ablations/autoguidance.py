"""Autoguidance against classifier-free guidance on the recipe_2024 sweep's REPA models (sampling only):

    python ablate.py --sweep=configs/ablations/autoguidance.py --root=runs/ablations --copy_to=docs/ablations

Each of the three `variant=repa` models of configs/ablations/recipe_2024.py (trained first if not finished) draws 500
samples unguided, with autoguidance by that sweep's `guide` (a 2-block, 32-wide model trained 500 steps) at
w = 1.25, 1.5, 2, with classifier-free guidance at 1.5, and with both (CFG 1.5, w = 1.25); scored by the digits
classifier as in recipe_2024.
"""
import os

from configs.ablations import recipe_2024

VARIANTS = ('guide', 'baseline', 'flow', 'lightning', 'autoguided')  # of recipe_2024: all but 'repa'


def get_sweep():
  guide = os.path.join(recipe_2024.root(), 'recipe_2024', 'variant=guide,seed=0')
  auto = lambda w: {'sample.guide_workdir': guide, 'sample.autoguidance_scale': w}
  return {
      'kind': 'sample',
      'base': recipe_2024.base(),
      'model_sweep': 'configs/ablations/recipe_2024.py',
      'exclude': [{'variant': v} for v in VARIANTS],
      'axes': {
          'guidance': [{'name': 'none'}, {'name': 'auto1.25', **auto(1.25)}, {'name': 'auto1.5', **auto(1.5)},
                       {'name': 'auto2', **auto(2.0)}, {'name': 'cfg1.5', 'sample.guidance_scale': 1.5},
                       {'name': 'cfg1.5+auto1.25', 'sample.guidance_scale': 1.5, **auto(1.25)}],
      },
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['digits_fd', 'digits_accuracy', 'sampling_seconds'],
  }
