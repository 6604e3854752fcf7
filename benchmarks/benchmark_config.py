"""The config a benchmark measures: the paper setting of each model, on synthetic data."""
from configs import lightningdit_xl, sit_xl, sit_xl_repa
from configs.dit import dit_config
from configs.validate import validate_config
from configs.unet_cifar10 import get_config

# the 2024-25 recipes on DiT-XL/2's shape: configs/sit_xl.py:2, configs/sit_xl_repa.py, configs/lightningdit_xl.py
RECIPES = {
    'sit_xl': lambda: sit_xl.get_config('2'), 'sit_xl_repa': sit_xl_repa.get_config,
    'lightningdit_xl': lightningdit_xl.get_config
}


def benchmark_config(model, patch=2, batch=256, dtype='bfloat16', attention='cudnn', remat=False, remat_policy='full',
                     grad_accum=1):
  """model: dit_s | dit_b | dit_l | dit_xl (with `patch`), unet (the DDPM CIFAR-10 U-Net) or one of RECIPES (patch 2;
  sit_xl_repa's latent batches also carry the 256 px images its DINOv2-B/14 reads)."""
  if model == 'unet':
    config = get_config()
  elif model in RECIPES:
    config = RECIPES[model]()
    validate_config(config)  # fills in REPA's encoder width
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
