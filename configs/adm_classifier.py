"""ADM's noisy ImageNet classifiers (Dhariwal & Nichol, 2021), which guide the ADM diffusion models.

The argument after ':' is the resolution, 64, 128, 256 or 512 (default 256): guided-diffusion's create_classifier
with the README's CLASSIFIER_FLAGS (width 128, attention at 32, 16 and 8 pixels with 64 channels per head, scale-shift
norm, residual downsampling, attention pooling; depth 2, and 4 for the 64x64 classifier) and channel_mult by image
size as in configs/adm_imagenet.py. The noise schedule is that resolution's diffusion model's, whose timesteps the
classifier reads when it guides it:

  arg  file                  depth  mult                   schedule
  64   64x64_classifier.pt   4      1, 2, 3, 4             cosine
  128  128x128_classifier.pt 2      1, 1, 2, 3, 4          linear
  256  256x256_classifier.pt 2      1, 1, 2, 2, 4, 4       linear
  512  512x512_classifier.pt 2      0.5, 1, 1, 2, 2, 4, 4  linear

Import a released classifier and sample the 256x256 model guided by it (guided-diffusion's classifier_sample.py
with --classifier_scale 1.0: 250 DDPM steps, the gradient of log p(y | x_t) shifting each step's mean):

    python main.py --mode=import --config=configs/adm_classifier.py:256 --workdir=runs/adm256_classifier \\
        --weights=256x256_classifier.pt
    python main.py --mode=sample --config=configs/adm_imagenet.py:256 --workdir=runs/adm256 \\
        --config.sample.classifier_workdir=runs/adm256_classifier --config.sample.classifier_scale=1.0

(scales in guided-diffusion's README: 1.0 at 64 and 256, 0.5 at 128, 4.0 at 512, 10.0 for the unconditional 256
model).
Training (--mode=train) follows guided-diffusion's classifier_train.py with the README's TRAIN_FLAGS: images randomly
cropped (80-100% of the short side) and flipped, noised at uniform timesteps, cross-entropy, AdamW with lr 3e-4 and weight decay 0.05 annealed linearly to zero over
300,000 steps of batch 256.
"""
from configs.default import base_config
from models.adm_variants import ARCHITECTURES, CLASSIFIER_DEPTHS, CLASSIFIER_HEAD_CHANNELS, SCHEDULES


def get_config(arg=None):
  resolution = 256 if arg in (None, '') else int(arg) if str(arg).isdigit() else arg
  if resolution not in CLASSIFIER_DEPTHS:
    raise ValueError(f'configs/adm_classifier.py:{arg}: the released ADM classifiers are 64, 128, 256 and 512 '
                     f'pixels; choose one of {sorted(CLASSIFIER_DEPTHS)}')
  c = base_config()
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.image_size = resolution
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.random_flip = True
  c.data.random_crop = True  # classifier_train.py loads its data with random_crop=True

  c.model.name = 'adm_classifier'
  c.model.base_channels = 128
  c.model.channel_mult = ARCHITECTURES[resolution]['channel_mult']  # create_classifier's, by image size as the U-Net's
  c.model.num_res_blocks = CLASSIFIER_DEPTHS[resolution]
  c.model.attn_resolutions = (32, 16, 8)
  c.model.num_head_channels = CLASSIFIER_HEAD_CHANNELS
  c.model.num_groups = 32
  c.model.scale_shift_norm = True
  c.model.resblock_updown = True
  c.model.symmetric_downsample = True
  c.model.pool = 'attention'
  c.model.dropout = 0.0
  c.model.attention_impl = 'cudnn'

  c.diffusion.schedule = SCHEDULES[resolution]
  c.diffusion.num_timesteps = 1000
  c.diffusion.label_dropout = 0.0

  c.optim.learning_rate = 3e-4
  c.optim.weight_decay = 0.05
  c.optim.decay_steps = 300_000
  c.optim.grad_clip = 0.0

  c.train.num_steps = 300_000
  c.train.batch_size = 256
  c.train.compute_dtype = 'bfloat16'
  c.train.checkpoint_every = 10_000
  c.train.sample_grid = 0  # a classifier draws no samples
  return c
