"""DiT-S on ImageNet 256 latents: python main.py --config=configs/dit_s.py:2 --workdir=runs/dit_s_2"""
from configs.dit import dit_config


def get_config(arg=None):
  return dit_config('S', arg)
