"""SiT-XL on ImageNet 256 latents: python main.py --config=configs/sit_xl.py:2 --workdir=runs/sit_xl_2

The argument is the patch size (2, 4 or 8); configs/sit.py has the paper's settings."""
from configs.sit import sit_config


def get_config(arg=None):
  return sit_config('XL', arg)
