"""DiT model size x patch size on the embedded digits, scaled down to train on CPU (DiT paper, Fig. 2/6, Table 4).

    python ablate.py --sweep=configs/ablations/dit_grid.py --root=runs/ablations

Digits upscaled to 16x16 (patch 2/4/8 -> 64/16/4 tokens); three widths named after the paper's
S/B/L, a fraction of the originals' depth x width (S 12x384, B 12x768, L 24x1024) so that the
whole grid trains in about 10 minutes on 2 CPU cores (500 steps of batch 64 per run). Every run trains the same number of steps with the same batch and is scored once at
the end, without guidance as in the paper's Table 4, by the digits classifier (Fréchet distance in
its features, recognised fraction). The full-size twin on ImageNet latents is dit_grid_imagenet.py.
"""
import ml_collections

from configs.quickstart import get_config

SIZES = {  # depth, width, heads
    'S': dict(depth=2, hidden_size=32, num_heads=2),
    'B': dict(depth=3, hidden_size=48, num_heads=3),
    'L': dict(depth=4, hidden_size=64, num_heads=4),
}


def base():
  c = get_config()
  c.data.image_size = 16
  c.model = ml_collections.ConfigDict(dict(name='dit', patch_size=4, mlp_ratio=4.0, **SIZES['B']))
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.ema_decay = 0.999
  c.optim.ema_warmup = True
  c.train.num_steps = 500
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.checkpoint_every = 500
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
      'kind': 'train',
      'base': base(),
      'axes': {
          'size': [{'name': name, **{f'model.{k}': v for k, v in size.items()}} for name, size in SIZES.items()],
          'patch': {'model.patch_size': [8, 4, 2]},
      },
      'metrics': ['digits_fd', 'digits_accuracy', 'loss'],
      'columns': ['params_m', 'gflops', 'digits_fd', 'digits_accuracy', 'loss', 'steps_per_second',
                  'train_seconds'],
      'plots': [{'x': 'gflops', 'y': ['digits_fd', 'digits_accuracy'], 'series': 'size', 'annotate': 'patch',
                 'logx': True, 'xlabel': 'forward Gflops per image (multiply-adds)', 'file': 'fd_vs_gflops.png'},
                {'x': 'gflops', 'y': 'loss', 'series': 'size', 'annotate': 'patch', 'logx': True,
                 'file': 'loss_vs_gflops.png'}],
  }
