"""SiT (Ma et al., 2024) on ImageNet 256x256 SD-VAE latents: the DiT of configs/dit.py trained as a transport.

Shared by configs/sit_xl.py, configs/sit_xl_repa.py and configs/lightningdit_xl.py. The paper's setting, from its code
(willisma/SiT): the DiT-XL/2 architecture without learned variances (675M parameters), the linear interpolant
x_t = t x_data + (1 - t) noise with velocity prediction and uniform times, AdamW lr 1e-4 without weight decay or
gradient clipping, batch 256, EMA 0.9999, horizontal flips (stored in the latent shards). Sampling: SDE
Euler-Maruyama, 250 steps, diffusion coefficient 'sigma' (norm 1), last step 'mean' of size 0.04, guidance 1.5 on the
first 3 latent channels (SiT's forward_with_cfg, as DiT's). SiT-XL/2 reaches FID-50K 2.06 with guidance 1.5 and 8.3
without at 7M steps (9.5 with the ODE sampler, unguided).

The data, VAE and encode step are those of configs/dit.py (its docstring has the commands).
"""
from configs.dit import dit_config


def sit_config(variant, patch_size=None):
  c = dit_config(variant, patch_size)
  c.diffusion.learn_sigma = False
  c.diffusion.objective = 'transport'
  c.diffusion.path = 'linear'
  c.diffusion.prediction = 'velocity'
  c.diffusion.transport_loss_weight = 'none'
  c.diffusion.flow_time_sampling = 'uniform'

  c.train.num_steps = 7_000_000

  c.sample.sampler = 'sde_euler'
  c.sample.num_steps = 250
  c.sample.diffusion_form = 'sigma'
  c.sample.diffusion_norm = 1.0
  c.sample.last_step = 'mean'
  c.sample.last_step_size = 0.04
  c.sample.guidance_scale = 1.5
  c.sample.guidance_channels = 3
  return c
