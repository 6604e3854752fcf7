"""ADM (Dhariwal & Nichol, 2021): the released class-conditional ImageNet models of openai/guided-diffusion.

The argument after ':' is the resolution, 64, 128, 256 or 512 (default 256); each gives the architecture and
diffusion of that model, from the MODEL_FLAGS of guided-diffusion's README and its script_util.create_model
(channel_mult by image size; attention at 32, 16 and 8 pixels; scale-shift norm; residual up/downsampling):

  arg  file                 channels  mult                   blocks  heads             dropout  schedule  qkv order
  64   64x64_diffusion.pt   192       1, 2, 3, 4             3       64 channels each  0.1      cosine    new
  128  128x128_diffusion.pt 256       1, 1, 2, 3, 4          2       4 per layer       0        linear    legacy
  256  256x256_diffusion.pt 256       1, 1, 2, 2, 4, 4       2       64 channels each  0        linear    legacy
  512  512x512_diffusion.pt 256       0.5, 1, 1, 2, 2, 4, 4  2       64 channels each  0        linear    legacy

A level has int(mult * channels) channels: the 512x512 model's first has 128. All predict eps with learned
variances (learn_sigma, 6 output channels), 1,000 steps, in pixel space (3 channels in [-1, 1]), 1,000 classes.
The unconditional 256x256_diffusion_uncond.pt is the 256 model with --config.data.num_classes=0.

Parameters (PARAMS; guided-diffusion's counted from its UNetModel built with the README's flags, torch 2.13):
guided-diffusion 295,904,454 (64), 421,529,606 (128), 553,838,086 (256), 552,814,086 (256 unconditional),
558,997,638 (512). Ours are the same plus the null-label row of the class embedding (4 x channels: 768, 1,024,
1,024, 1,024), which this codebase's class-conditional models have and ADM's do not: 295,905,222, 421,530,630,
553,839,110, 558,998,662; unconditional 552,814,086, equal.

Import a released file and sample as guided-diffusion's image_sample.py does (250 DDPM steps with the learned
variances, respaced like its `--timestep_respacing 250`, x0 clipped, no guidance: the released models were not
trained with label dropout, so classifier-free guidance has no null label to use; the converter sets that row to
zeros):

    python main.py --mode=import --config=configs/adm_imagenet.py:256 --workdir=runs/adm256 --weights=256x256_diffusion.pt
    python main.py --mode=sample --config=configs/adm_imagenet.py:256 --workdir=runs/adm256

Training reads TFDS imagenet2012 at the resolution (resized as ADM does: box-halving, bicubic, centre crop),
with horizontal flips; --config.data.source=image_folder --config.data.path=DIR for a folder of class
subfolders. The optimiser fields are guided-diffusion's image_train.py defaults (Adam, lr 1e-4, no weight decay,
no clipping, EMA 0.9999); batch 256.
"""
from configs.default import base_config
from models.adm_variants import ARCHITECTURES, QKV_ORDERS, SCHEDULES

# resolution -> (ours, guided-diffusion's) parameter counts, class-conditional; unconditional 256: both 552,814,086.
PARAMS = {
    64: (295_905_222, 295_904_454), 128: (421_530_630, 421_529_606), 256: (553_839_110, 553_838_086),
    512: (558_998_662, 558_997_638)
}


def get_config(arg=None):
  resolution = 256 if arg in (None, '') else int(arg) if str(arg).isdigit() else arg
  if resolution not in ARCHITECTURES:
    raise ValueError(f'configs/adm_imagenet.py:{arg}: the released ADM ImageNet models are 64, 128, 256 and 512 '
                     f'pixels; choose one of {sorted(ARCHITECTURES)}')
  c = base_config()
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.image_size = resolution
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.random_flip = True

  c.model.name = 'unet'
  c.model.update(ARCHITECTURES[resolution])
  c.model.attn_resolutions = (32, 16, 8)
  c.model.num_groups = 32
  c.model.scale_shift_norm = True
  c.model.resblock_updown = True
  c.model.symmetric_downsample = True  # ADM's conv padding, were resblock_updown turned off
  c.model.attention_impl = 'cudnn'

  c.diffusion.objective = 'eps'
  c.diffusion.schedule = SCHEDULES[resolution]
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4  # ADM's linear schedule for 1,000 steps
  c.diffusion.beta_end = 0.02
  c.diffusion.learn_sigma = True
  c.diffusion.label_dropout = 0.0  # ADM trains without; classifier-free guidance needs label dropout

  c.weights.qkv_order = QKV_ORDERS[resolution]

  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0
  c.optim.ema_decay = 0.9999

  c.train.num_steps = 2_000_000
  c.train.batch_size = 256
  c.train.compute_dtype = 'bfloat16'
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 20_000

  c.sample.sampler = 'ddpm'
  c.sample.num_steps = 250
  c.sample.spacing = 'linspace'  # guided-diffusion's space_timesteps(1000, '250'): round(k * 999 / 249)
  c.sample.clip_denoised = True
  c.sample.guidance_scale = 1.0
  c.sample.num_samples = 50_000
  c.sample.batch_size = 32 if resolution == 512 else 256  # guided-diffusion sampled 512 at 4 per GPU on 8 GPUs
  return c
