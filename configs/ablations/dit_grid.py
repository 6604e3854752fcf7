"""DiT model size x patch size on the embedded digits, scaled down to train on CPU (DiT paper, Fig. 2/6, Table 4).

    python ablate.py --sweep=configs/ablations/dit_grid.py --root=runs/ablations

The digits at their native 8x8, so patch 2/4/8 gives 16/4/1 tokens (the paper's 32x32 latents give
256/64/16: the same factor of 4 per patch step). Four sizes named after the paper's S/B/L/XL keep its
shape of the family (B = S at twice the width, L twice as deep and 1.5x as wide as B, XL a little
larger again) at 2-5 blocks of width 32-112 instead of 12-28 blocks of 384-1152, so that the 12 runs
train in about 25 minutes on 2 CPU cores. Every run trains the same 2000 steps with the same batch
and is scored once at the end, without guidance as in the paper's Table 4, by the digits classifier
(Fréchet distance in its features, recognised fraction). The full-size twin on ImageNet latents is
dit_grid_imagenet.py.
"""
import ml_collections

from configs.quickstart import get_config

SIZES = {  # depth, width, heads
    'S': dict(depth=2, hidden_size=32, num_heads=2),
    'B': dict(depth=2, hidden_size=64, num_heads=4),
    'L': dict(depth=4, hidden_size=96, num_heads=6),
    'XL': dict(depth=5, hidden_size=112, num_heads=7),
}


def base():
  c = get_config('long')
  c.data.image_size = 8
  c.model = ml_collections.ConfigDict(dict(name='dit', patch_size=4, mlp_ratio=4.0, **SIZES['B']))
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.ema_decay = 0.999
  c.optim.ema_warmup = True
  c.train.num_steps = 2000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.sample_every = 0
  c.train.sample_grid = 0
  c.sample.sampler = 'ddim'
  c.sample.num_steps = 20
  c.sample.guidance_scale = 1.0  # no guidance, as the paper's model-size comparison
  c.sample.batch_size = 500
  c.evals.digits = ml_collections.ConfigDict({'every_steps': 0, 'num_samples': 500, 'seed': 12345})
  return c


def get_sweep():
  return {
      'kind':
          'train',
      'base':
          base(),
      'axes': {
          'size': [{'name': name, **{f'model.{k}': v for k, v in size.items()}} for name, size in SIZES.items()],
          'patch': {'model.patch_size': [8, 4, 2]},
      },
      'metrics': ['digits_fd', 'digits_accuracy', 'loss'],
      'columns': ['params_m', 'gflops', 'digits_fd', 'digits_accuracy', 'loss', 'steps_per_second', 'train_seconds'],
      'plots': [{
          'x': 'gflops', 'y': 'digits_fd', 'series': 'size', 'annotate': 'patch', 'logx': True, 'logy': True,
          'xlabel': 'forward Gflops per image (multiply-adds)', 'file': 'fd_vs_gflops.png'
      }, {
          'x': 'gflops', 'y': 'digits_accuracy', 'series': 'size', 'annotate': 'patch', 'logx': True,
          'xlabel': 'forward Gflops per image (multiply-adds)', 'file': 'accuracy_vs_gflops.png'
      }, {
          'x': 'gflops', 'y': 'loss', 'series': 'size', 'annotate': 'patch', 'logx': True, 'file': 'loss_vs_gflops.png'
      }],
  }
