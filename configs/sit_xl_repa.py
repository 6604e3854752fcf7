"""SiT-XL/2 + REPA (Yu et al., 2025) on ImageNet 256 latents.

    python -m models.dinov2_convert --weights=dinov2_vitb14_pretrain.pth --out=data/dinov2_vitb14.msgpack
    python main.py --mode=encode --config=configs/sit_xl_repa.py --workdir=runs/encode_imagenet256_repa
    python main.py --config=configs/sit_xl_repa.py --workdir=runs/sit_xl_2_repa

SiT-XL/2 (configs/sit.py) with REPA as its code (sihyun-yu/REPA) trains it: the token states after block 8 of 28,
through a 3-layer SiLU projector of width 2048, aligned with the patch tokens of a frozen DINOv2-B/14 at 224 px (16x16
tokens, the DiT's grid at patch 2), weight 0.5; AdamW lr 1e-4, batch 256, EMA 0.9999, 4M steps. REPA reports FID-50K
5.9 at 400K steps without guidance (SiT-XL/2 alone: 8.3 at 7M) and 1.42 at 4M with guidance 1.8 on all channels in
the interval t in [0, 0.7] of its time (noise at 1), which is network time [300, 1000] here (data at SiT time 1), SDE
Euler-Maruyama in 250 steps. The encoder reads the images, kept beside the latents by --mode=encode (docs/repa.md).
"""
from configs.sit import sit_config


def get_config(arg=None):
  del arg
  c = sit_config('XL', 2)
  c.data.path = 'data/imagenet256_latents_repa'
  c.repa.encoder = 'dinov2_vitb14'
  c.repa.encoder_weights = 'data/dinov2_vitb14.msgpack'
  c.repa.encoder_resolution = 224
  c.repa.depth = 8
  c.repa.projector_dim = 2048
  c.repa.weight = 0.5
  c.train.num_steps = 4_000_000
  c.sample.guidance_scale = 1.8
  c.sample.guidance_channels = 0
  c.sample.guidance_interval = (300.0, 1000.0)
  return c
