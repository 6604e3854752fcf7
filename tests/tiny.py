"""Tiny configs shared by the tests: seconds per step on a 2-core CPU."""
from configs.quickstart import get_config


def tiny_unet_config(**overrides):
  c = get_config('long')
  c.model.base_channels = 8
  # One level, no attention but the middle block's: its train step compiles in 4.6 s against 7.8 s with a second level
  # and attention at 4x4. Tests whose point is the architecture set their own.
  c.model.channel_mult = (1,)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = ()
  c.model.num_groups = 4
  c.train.batch_size = 16
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 4  # once, at the end: an orbax save of the tiny state takes 0.5 s (1.3 ms a leaf)
  c.train.sample_every = 0
  c.train.sample_grid = 0
  c.sample.num_steps = 4
  c.sample.num_samples = 8
  c.sample.batch_size = 8
  c.data.prefetch = 0
  c.evals = {}
  c.mesh.min_shard_size = 0  # shard every divisible parameter under fsdp, however small
  # One of the process's 8 fake devices: a single-device program compiles and runs in about half the time. Tests of
  # sharding, and the subprocess config (tests/tiny_config.py), take every device (-1).
  c.mesh.num_devices = 1
  for key, value in overrides.items():
    section, field = key.split('__')
    c[section][field] = value
  return c
