"""The config a benchmark measures: the paper setting of each model, on synthetic data."""
from configs.dit import dit_config
from configs.unet_cifar10 import get_config


def benchmark_config(model, patch=2, batch=256, dtype='bfloat16', attention='cudnn', remat=False, remat_policy='full',
                     grad_accum=1):
  """model: dit_s | dit_b | dit_l | dit_xl (with `patch`) or unet (the DDPM CIFAR-10 U-Net)."""
  if model == 'unet':
    config = get_config()
  else:
    config = dit_config(model.split('_')[1].upper(), patch)
  config.model.attention_impl = None if attention == 'xla' else 'cudnn'
  config.data.source = 'digits'  # no dataset is read; keeps validation happy without paths
  config.train.compute_dtype = dtype
  config.train.remat = remat
  config.train.remat_policy = remat_policy
  config.train.batch_size = batch
  config.train.grad_accum_steps = grad_accum
  return config
