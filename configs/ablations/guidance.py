"""Classifier-free guidance scale on one trained quickstart model (sampling only).

    python main.py --config=configs/quickstart.py:long --workdir=runs/quickstart_long      # the model, once
    python ablate.py --sweep=configs/ablations/guidance.py --root=runs/ablations --model_workdir=runs/quickstart_long

Scale 0 is the unconditional model, 1 the plain conditional one; larger scales trade diversity
(Fréchet distance) for class fidelity (recognised fraction). The scale is a traced argument of the
sampling function, so the whole sweep compiles once. DDIM, 20 steps, 500 samples per point.
"""
from configs.ablations import sampler_steps


def base():
  c = sampler_steps.base()  # 500 samples, one noise seed
  c.sample.sampler = 'ddim'
  c.sample.num_steps = 20
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
      'axes': {'guidance': {'sample.guidance_scale': [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0]}},
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['digits_accuracy', 'digits_fd', 'sampling_seconds'],
      'plots': [{
          'x': 'guidance', 'y': ['digits_accuracy', 'digits_fd'], 'file': 'metrics_vs_guidance.png',
          'xlabel': 'guidance scale'
      }],
  }
