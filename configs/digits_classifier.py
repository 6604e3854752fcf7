"""A noisy classifier of the embedded 8x8 digits (no download), to guide a digits diffusion model (ADM's classifier
guidance; docs/samplers.md#classifier-guidance). 2,000 steps, a few minutes on 2 CPU cores:

    python main.py --config=configs/digits_classifier.py --workdir=runs/digits_classifier

It reads the quickstart's noise schedule (linear, 1,000 steps), so it guides configs/quickstart.py models; the
unconditional one, trained and evaluated with it (the digits evaluator scores the samples against the labels the
classifier was asked for):

    python main.py --config=configs/quickstart.py:classifier_guided --workdir=runs/digits_classifier_guided
"""
from configs.default import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.data.source = 'digits'
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 10

  c.model.name = 'adm_classifier'
  c.model.base_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.num_head_channels = 32
  c.model.num_groups = 8
  c.model.pool = 'attention'

  c.diffusion.label_dropout = 0.0

  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.05
  c.optim.decay_steps = 2000
  c.optim.ema_decay = 0.999
  c.optim.ema_warmup = True

  c.train.num_steps = 2000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.sample_grid = 0
  return c
