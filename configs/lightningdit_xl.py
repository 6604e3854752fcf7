"""LightningDiT-XL/2 (Yao et al., 2025) on ImageNet 256 SD-VAE latents:

    python main.py --config=configs/lightningdit_xl.py --workdir=runs/lightningdit_xl_2

LightningDiT's recipe (hustvl/LightningDiT, configs/lightningdit_xl_vavae_f16d32.yaml) on the SD-VAE latents of
configs/dit.py, patch 2 (the paper's VA-VAE f16d32 tokenizer with patch 1 is out of scope): the DiT-XL block with
SwiGLU, RMSNorm and 2-D RoPE (qk-norm off, as released), 675M parameters; the linear transport with velocity
prediction, logit-normal times and the cosine velocity loss (weight 1); AdamW lr 2e-4, beta2 0.95, no weight decay or
clipping, batch 1024, EMA 0.9999, 80K steps (64 epochs: FID-50K 2.11 on VA-VAE latents). Sampling as its code: the
ODE by Euler in 250 steps, times shifted by 0.3 towards the noise, guidance on the first 3 channels only where SiT time
>= 0.11 (network time [110, 1000]). Its scale 10 (6.7 at 800 epochs) is for the 32-channel VA-VAE latents; on the
4-channel SD-VAE latents this config guides at 1.5, as DiT and SiT do there: sweep it (configs/ablations/guidance.py).
"""
from configs.sit import sit_config
from models.dit import LIGHTNINGDIT_VARIANTS


def get_config(arg=None):
  del arg
  c = sit_config('XL', 2)
  for key, value in LIGHTNINGDIT_VARIANTS['XL'].items():
    c.model[key] = value
  c.diffusion.flow_time_sampling = 'logit_normal'
  c.diffusion.cosine_loss_weight = 1.0
  c.optim.learning_rate = 2e-4
  c.optim.b2 = 0.95
  c.train.batch_size = 1024
  c.train.num_steps = 80_000
  c.sample.sampler = 'ode_euler'
  c.sample.num_steps = 250
  c.sample.flow_shift = 1 / 0.3  # LightningDiT's timestep_shift 0.3 (diffusion/transport_samplers.shifted_times)
  c.sample.guidance_scale = 1.5
  c.sample.guidance_interval = (110.0, 1000.0)
  return c
