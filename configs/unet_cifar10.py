"""The DDPM CIFAR-10 U-Net (Ho et al., 2020): 128 channels, (1, 2, 2, 2), attention at 16x16, ~35.7M params.

Class-conditional here (label dropout 0.1 for guidance); set --config.data.num_classes=0 for the
unconditional model of the paper. Reads TFDS cifar10 (`pip install -r requirements-tfds.txt`; prepared once, with
TensorFlow, by `tfds build cifar10 --file_format=array_record`), or point data at an image folder.
"""
from configs.default import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.data.source = 'tfds'
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.random_flip = True

  c.model.name = 'unet'
  c.model.base_channels = 128
  c.model.channel_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.num_heads = 1
  c.model.num_groups = 32
  c.model.scale_shift_norm = False

  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999

  c.train.num_steps = 800_000
  c.train.batch_size = 128
  c.sample.sampler = 'ddim'
  c.sample.num_steps = 100
  return c
