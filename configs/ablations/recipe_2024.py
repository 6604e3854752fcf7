"""The 2024-25 training recipe, one trick at a time, on a small DiT of the 8x8 digits (3 seeds each):

    python main.py --config=configs/digits_encoder.py --workdir=runs/digits_encoder   # REPA's frozen encoder, once
    python ablate.py --sweep=configs/ablations/recipe_2024.py --root=runs/ablations --copy_to=docs/ablations

Variants (each adds to the one before; docs/ablations.md has the table and the plot):
  baseline    DiT (4 blocks of width 64, 4 heads, patch 2: 16 tokens), VP eps-prediction on the linear schedule,
              uniform timesteps, AdamW (beta2 0.999); DPM-Solver++(2M), 20 steps
  flow        SiT's linear transport with velocity prediction and logit-normal times (SD3, LightningDiT); ODE Heun
              on 11 times (20 network calls)
  lightning   LightningDiT's blocks (SwiGLU, RMSNorm, 2-D RoPE, qk-norm), its cosine velocity loss and beta2 0.95
  repa        REPA: block 2's tokens, through a 3-layer projector of width 256, aligned (weight 0.5) with the 4x4
              feature grid of the digits encoder (configs/digits_encoder.py; not the evaluation classifier)
  autoguided  the repa variant, sampled with autoguidance (w = 2) by `guide`: a 2-block, 32-wide model of the same
              recipe trained for 500 steps (trained first, seed 0 only; scored too)
Every run trains 1500 steps of batch 128 (AdamW 1e-3, 100 warmup steps, EMA 0.999 with warmup) and is scored every
250 steps without classifier-free guidance by the digits classifier (500 samples, fixed noise): the curves of
Fréchet distance against the training step, averaged over the seeds, and the step at which each variant reaches the
baseline's final distance (curves_digits_fd.md).
"""
import os

import ml_collections
from absl import flags

from configs.quickstart import get_config

STEPS, EVERY = 1500, 250


def root():
  """ablate.py's --root (the guide's workdir is a run of this sweep)."""
  return flags.FLAGS.root if flags.FLAGS.is_parsed() and 'root' in flags.FLAGS else 'runs/ablations'


def base():
  c = get_config('long')
  c.model = ml_collections.ConfigDict(
      dict(name='dit', patch_size=2, depth=4, hidden_size=64, num_heads=4, mlp_ratio=4.0, mlp='gelu', norm='layer',
           rope=False, qk_norm=False))
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.ema_decay = 0.999
  c.optim.ema_warmup = True
  c.train.num_steps = STEPS
  c.train.batch_size = 128
  c.train.log_every = EVERY
  c.train.checkpoint_every = STEPS
  c.train.sample_every = 0
  c.train.sample_grid = 0
  c.sample.sampler, c.sample.num_steps, c.sample.spacing = 'dpm++2m', 20, 'trailing'
  c.sample.guidance_scale = 1.0
  c.sample.batch_size = 500
  c.evals.digits = ml_collections.ConfigDict({'every_steps': EVERY, 'num_samples': 500, 'seed': 12345})
  return c


FLOW = {
    'diffusion.objective': 'transport', 'diffusion.path': 'linear', 'diffusion.prediction': 'velocity',
    'diffusion.flow_time_sampling': 'logit_normal', 'sample.sampler': 'ode_heun', 'sample.num_steps': 11
}
LIGHTNING = {
    **FLOW, 'model.mlp': 'swiglu', 'model.norm': 'rms', 'model.rope': True, 'model.qk_norm': True,
    'diffusion.cosine_loss_weight': 1.0, 'optim.b2': 0.95
}
REPA = {
    **LIGHTNING, 'repa.encoder': 'digits', 'repa.encoder_weights': 'runs/digits_encoder', 'repa.depth': 2,
    'repa.projector_dim': 256, 'repa.weight': 0.5
}
GUIDE = {
    **LIGHTNING, 'model.depth': 2, 'model.hidden_size': 32, 'model.num_heads': 2, 'train.num_steps': 500,
    'train.checkpoint_every': 500
}


def get_sweep():
  guide_workdir = os.path.join(root(), 'recipe_2024', 'variant=guide,seed=0')
  return {
      'kind':
          'train',
      'base':
          base(),
      'axes': {
          'variant': [{'name': 'guide', **GUIDE}, {'name': 'baseline'}, {'name': 'flow', **FLOW},
                      {'name': 'lightning', **LIGHTNING}, {'name': 'repa', **REPA}, {
                          'name': 'autoguided', **REPA, 'sample.guide_workdir': guide_workdir,
                          'sample.autoguidance_scale': 2.0
                      }],
          'seed': {'seed': [0, 1, 2]},
      },
      'exclude': [{'variant': 'guide', 'seed': 1}, {'variant': 'guide', 'seed': 2}],
      'metrics': ['digits_fd', 'digits_accuracy', 'loss'],
      'columns': ['params_m', 'digits_fd', 'digits_accuracy', 'loss', 'steps_per_second', 'train_seconds'],
      'curves': [{'y': 'digits_fd', 'series': 'variant', 'over': 'seed', 'reference': 'baseline', 'logy': True}, {
          'y': 'digits_accuracy', 'series': 'variant', 'over': 'seed', 'reference': 'baseline', 'lower_is_better': False
      }],
  }
