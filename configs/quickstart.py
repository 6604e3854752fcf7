"""Quickstart: a 0.71M-parameter class-conditional U-Net on the embedded 8x8 digits, about 3 minutes on 2 CPU cores.

python main.py --config=configs/quickstart.py --workdir=runs/quickstart

1,300 steps of batch 64 (AdamW 3e-3, cosine decay to 0, EMA 0.995; no attention layer), then 1,000 samples by
DPM-Solver++(2M) in 20 steps with guidance 1.5, scored by the digits classifier (docs/results.md has the figures).

`:long` is the earlier recipe: the 0.76M-parameter U-Net with attention at 4x4, 1,500 steps of batch 128 (AdamW 2e-3,
constant; EMA 0.999; DDIM 50 steps, guidance 2). The sweeps of configs/ablations/ and the variants below train
with it, so their documented results reproduce.

`:classifier_guided` is the long recipe's U-Net unconditional (no labels, no classifier-free guidance), sampled and evaluated
with ADM's classifier guidance by the noisy digit classifier of configs/digits_classifier.py, trained first:

python main.py --config=configs/digits_classifier.py --workdir=runs/digits_classifier
python main.py --config=configs/quickstart.py:classifier_guided --workdir=runs/digits_classifier_guided

`:super_res` is a super-resolution U-Net (the long recipe) (ADM's SuperResModel, configs/adm_upsampler.py at digit size): it
upsamples each digit from 4x4 (its 8x8 image area-downsampled) back to 8x8, class-conditional, without guidance.
"""
import ml_collections

from configs.default import base_config

ARGS = ('', 'long', 'classifier_guided', 'super_res')


def get_config(arg=None):
  arg = arg or ''
  if arg not in ARGS:
    raise ValueError(f"configs/quickstart.py:{arg}: the argument is one of {', '.join(map(repr, ARGS))}")
  c = base_config()
  c.data.source = 'digits'
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 10

  c.model.name = 'unet'
  c.model.base_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.dropout = 0.0
  c.model.num_heads = 1
  c.model.num_groups = 8
  c.model.scale_shift_norm = True

  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 100
  c.optim.ema_decay = 0.999
  c.optim.ema_warmup = True

  c.train.num_steps = 1500
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.sample_every = 500
  c.train.sample_grid = 100

  c.sample.sampler = 'ddim'
  c.sample.num_steps = 50
  c.sample.guidance_scale = 2.0
  c.sample.num_samples = 1000
  c.sample.batch_size = 500

  c.evals.digits = ml_collections.ConfigDict({'every_steps': 0, 'num_samples': 1000, 'seed': 12345})
  if arg == '':  # the fast recipe: no attention, more steps of a smaller batch, a decaying rate, 20 sampler steps
    c.model.attn_resolutions = ()  # attention at 4x4 cost a quarter of the step time on CPU
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.optim.decay, c.optim.decay_steps = 'cosine', 1300
    c.optim.ema_decay = 0.995
    c.train.num_steps = 1300
    c.train.batch_size = 64
    c.train.checkpoint_every = 1300
    c.train.sample_every = 0  # one grid, at the end
    c.sample.sampler, c.sample.num_steps, c.sample.spacing = 'dpm++2m', 20, 'trailing'
    c.sample.guidance_scale = 1.5
    c.sample.batch_size = 100  # the final grid's shape too: one compiled sampler (samples do not depend on it)
  if arg == 'classifier_guided':
    c.data.num_classes = 0
    c.sample.guidance_scale = 1.0
    c.sample.classifier_workdir = 'runs/digits_classifier'
    c.sample.classifier_scale = 4.0
  if arg == 'super_res':
    c.model.low_res_size = 4
    c.sample.guidance_scale = 1.0
  return c
