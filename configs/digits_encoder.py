"""The small frozen encoder REPA aligns a digits DiT with (docs/repa.md): ADM's noisy classifier of the embedded 8x8
digits, read at t = 0 through its 4x4 grid of 64-wide spatial features, the token grid of a DiT with patch size 2.
About a minute on 2 CPU cores:

    python main.py --config=configs/digits_encoder.py --workdir=runs/digits_encoder

A digits DiT trained with it: --config.repa.encoder=digits --config.repa.encoder_weights=runs/digits_encoder.
"""
from configs.digits_classifier import get_config as digits_classifier_config


def get_config(arg=None):
  c = digits_classifier_config(arg)
  c.optim.decay_steps = c.train.num_steps = c.train.checkpoint_every = 400
  c.train.batch_size = 64
  return c
