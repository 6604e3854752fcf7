"""DiT on ImageNet 256x256 in the SD-VAE latent space (32x32x4), the setup of Peebles & Xie (2023).

Shared by configs/dit_{s,b,l,xl}.py; the argument after ':' is the patch size (2, 4 or 8).
AdamW 1e-4, no weight decay, batch 256, EMA 0.9999, horizontal flips, label dropout 0.1, learned sigma,
linear schedule with 1000 steps; sampling as DiT's: 250 DDPM steps (linspace spacing), no clipping,
guidance 1.5 on the first 3 of the 4 latent channels (DiT's `forward_with_cfg`; its FIDs reflect it). The released DiT-XL/2 weights import into configs/dit_xl.py (docs/pretrained.md).

Training reads pre-encoded latents from data/imagenet256_latents (input_pipeline/latents.py). Once:
convert the VAE (stabilityai/sd-vae-ft-mse, diffusion_pytorch_model.safetensors) with
`python -m models.vae_convert --weights=diffusion_pytorch_model.safetensors --out=data/sd_vae_ft_mse.msgpack`
and prepare TFDS imagenet2012 for random access (`tfds build imagenet2012 --file_format=array_record`).
Then the two commands, encode ImageNet (1.28M images and their mirror images, float16 latents, about
21 GB; resumable: rerun the same command after an interruption), then train:

    python main.py --mode=encode --config=configs/dit_xl.py:2 --workdir=runs/encode_imagenet256
    python main.py --config=configs/dit_xl.py:2 --workdir=runs/dit_xl_2

Both read the VAE from data.vae_weights=data/sd_vae_ft_mse.msgpack (training decodes sample grids with
it). The encoding is the same for every DiT variant and patch size: encode once, train any of them.
An image folder works too: --config.data.pixels.source=image_folder --config.data.pixels.path=DIR.
"""
from configs.default import base_config
from models.dit import DIT_VARIANTS


def dit_config(variant, patch_size=None):
  patch_size = 2 if patch_size in (None, '') else int(patch_size)
  if patch_size not in (2, 4, 8):
    raise ValueError(f'DiT-{variant} patch size must be 2, 4 or 8, got {patch_size} (configs/dit_*.py:<patch>)')
  c = base_config()
  c.data.source = 'latents'
  c.data.path = 'data/imagenet256_latents'
  c.data.image_size = 32
  c.data.channels = 4
  c.data.num_classes = 1000
  c.data.random_flip = False  # the latent shards hold each image's mirror image as a second entry
  c.data.latent_scale = 0.18215
  c.data.vae_weights = 'data/sd_vae_ft_mse.msgpack'
  c.data.vae_config = 'sd'
  c.data.pixels.source = 'tfds'  # what --mode=encode encodes into data.path
  c.data.pixels.name = 'imagenet2012'
  c.data.pixels.split = 'train'
  c.data.pixels.image_size = 256
  c.data.pixels.channels = 3
  c.encode.flips = True

  c.model.name = 'dit'
  c.model.patch_size = patch_size
  for key, value in DIT_VARIANTS[variant].items():
    c.model[key] = value
  c.model.mlp_ratio = 4.0
  c.model.mlp, c.model.norm = 'gelu', 'layer'  # LightningDiT's blocks (docs/models.md): 'swiglu', 'rms'
  c.model.rope, c.model.qk_norm = False, False
  c.model.attention_impl = 'cudnn'

  c.diffusion.learn_sigma = True  # the paper's models: learned variances, Improved DDPM's hybrid loss

  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0
  c.optim.ema_decay = 0.9999

  c.train.num_steps = 400_000
  c.train.batch_size = 256
  c.train.compute_dtype = 'bfloat16'
  c.train.log_every = 100
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 20_000

  c.sample.sampler = 'ddpm'
  c.sample.num_steps = 250
  c.sample.spacing = 'linspace'  # DiT's (ADM's) 250 of 1000 steps: round(k * 999 / 249) = 0, 4, ..., 995, 999
  c.sample.clip_denoised = False  # latents are not confined to [-1, 1]
  c.sample.guidance_scale = 1.5
  c.sample.guidance_channels = 3  # DiT's forward_with_cfg guides the first 3 of the 4 latent channels
  c.sample.num_samples = 50_000
  c.sample.batch_size = 256
  return c
