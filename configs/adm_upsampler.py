"""ADM's super-resolution ImageNet models (Dhariwal & Nichol, 2021; "ADM-U"): guided-diffusion's SuperResModel.

A class-conditional U-Net that also reads the image at low resolution, upsampled bilinearly and concatenated to
its input (6 channels in; models/unet.py's `low_res_size`). The argument after ':' names the released model,
64_256 or 128_512 (default 64_256); each is sr_create_model with the README's MODEL_FLAGS:

  arg      file                 low res  image  channels  mult              blocks  attention at    heads
  64_256   64_256_upsampler.pt  64       256    192       1, 1, 2, 2, 4, 4  2       32, 16, 8 px    4 per layer
  128_512  128_512_upsampler.pt 128      512    192       1, 1, 2, 2, 4, 4  2       32, 16 px       64 channels each

Both: scale-shift norm, residual up/downsampling, legacy qkv order, no dropout, eps with learned variances,
1,000 linear-schedule steps, pixels in [-1, 1], 1,000 classes. Parameters (PARAMS): guided-diffusion's
311,795,910 and 308,835,270; ours add the null-label row (4 x 192 = 768).

Import a released file, then upsample a base model's samples as guided-diffusion's super_res_sample.py does (250
respaced DDPM steps with the learned variances, x0 clipped; the labels are the base samples' own):

    python main.py --mode=import --config=configs/adm_upsampler.py:64_256 --workdir=runs/adm64_256 \\
        --weights=64_256_upsampler.pt
    python main.py --mode=sample --config=configs/adm_upsampler.py:64_256 --workdir=runs/adm64_256 \\
        --config.sample.low_res_samples=runs/adm64/samples.npz

Without sample.low_res_samples, sampling (and training's grids and evaluators) upsamples the dataset's first
images, area-downsampled. Training reads TFDS imagenet2012 at the large size and makes the low-resolution input
by area downsampling (super_res_train.py's F.interpolate(mode='area')), with the recipe of configs/adm_imagenet.py.
"""
from configs.adm_imagenet import get_config as adm_config
from models.adm_variants import UPSAMPLERS

# name -> (ours, guided-diffusion's) parameter counts
PARAMS = {'64_256': (311_796_678, 311_795_910), '128_512': (308_836_038, 308_835_270)}


def get_config(arg=None):
  name = '64_256' if arg in (None, '') else str(arg)
  if name not in UPSAMPLERS:
    raise ValueError(f'configs/adm_upsampler.py:{arg}: the released ADM upsamplers are {", ".join(UPSAMPLERS)} '
                     '(low resolution _ image size)')
  arch = UPSAMPLERS[name]
  c = adm_config(256)
  c.data.image_size = arch['image_size']
  c.model.update(base_channels=192, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, dropout=0.0,
                 attn_resolutions=arch['attn_resolutions'], num_head_channels=arch['num_head_channels'],
                 num_heads=arch['num_heads'], low_res_size=arch['low_res_size'])
  c.diffusion.schedule = 'linear'
  c.weights.qkv_order = 'legacy'
  c.sample.batch_size = 32
  return c
