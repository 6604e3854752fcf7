"""Metric writers: TensorBoard event files and the console, behind one small interface.

clu's writers (clu.metric_writers) import TensorFlow, which the GPU image and a plain install lack,
so TensorBoard events are written with tensorboardX (pure Python) unless TensorFlow is importable,
in which case clu's default writer is used.
"""
import importlib.util
import json
import logging
import os
import sys

import numpy as np


class ConsoleWriter:
  def write_scalars(self, step, scalars):
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in sorted(scalars.items())))

  def write_images(self, step, images):
    pass

  def flush(self):
    pass

  def close(self):
    pass


class JsonlWriter:
  """Scalars appended as one JSON object per line ({'step': ..., name: value}), easy to collect."""
  def __init__(self, path):
    self.path = path

  def write_scalars(self, step, scalars):
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n')

  def write_images(self, step, images):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def import_summary_writer():
  """tensorboardX's SummaryWriter. tensorboardX imports PyTorch whenever it is installed, only to accept its tensors
  (2 s of every run's start-up on a CPU machine); the values written here are numpy, so PyTorch is hidden during that
  import unless it is loaded already."""
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX takes as "not installed"
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules['torch']
  return SummaryWriter


class TensorboardXWriter:
  def __init__(self, logdir):
    self.writer = import_summary_writer()(logdir)

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self.writer.add_scalar(k, float(v), step)

  def write_images(self, step, images):
    for k, v in images.items():  # v: [H, W, C] uint8
      self.writer.add_image(k, np.asarray(v), step, dataformats='HWC')

  def flush(self):
    self.writer.flush()

  def close(self):
    self.writer.close()


class MultiWriter:
  def __init__(self, writers):
    self.writers = writers

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_images(self, step, images):
    for w in self.writers:
      w.write_images(step, images)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


class CluWriter:
  """clu's default writer (TensorBoard through TensorFlow, plus logging)."""
  def __init__(self, logdir, just_logging):
    from clu import metric_writers
    self.writer = metric_writers.create_default_writer(logdir, just_logging=just_logging)

  def write_scalars(self, step, scalars):
    self.writer.write_scalars(step, scalars)

  def write_images(self, step, images):
    self.writer.write_images(step, {k: np.asarray(v)[None] for k, v in images.items()})

  def flush(self):
    self.writer.flush()

  def close(self):
    self.writer.close()


def create_writer(workdir, is_main_process=True):
  """TensorBoard events in workdir/tensorboard, scalars in workdir/metrics.jsonl and the console on the
  main process; the console only elsewhere."""
  if not is_main_process:
    return ConsoleWriter()
  logdir = os.path.join(workdir, 'tensorboard')
  jsonl = JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))
  # clu's TensorFlow writer also imports tensorboard, which tensorflow-cpu 2.21 no longer installs.
  if all(importlib.util.find_spec(m) is not None for m in ('tensorflow', 'tensorboard')):
    return MultiWriter([CluWriter(logdir, just_logging=False), jsonl])
  if importlib.util.find_spec('tensorboardX') is None:  # e.g. a bare accelerator image: keep training, say so
    logging.warning(
        'neither tensorflow with tensorboard nor tensorboardX is installed: no TensorBoard events, '
        'metrics go to %s and the console (pip install tensorboardX)', jsonl.path)
    return MultiWriter([ConsoleWriter(), jsonl])
  return MultiWriter([TensorboardXWriter(logdir), ConsoleWriter(), jsonl])


class ProfileWindow:
  """A jax.profiler trace of `num_steps` train steps, taken once per run after its first call (so compilation is not
  in it), into <workdir>/tensorboard/plugins/profile/<time>/<host>.xplane.pb, which TensorBoard's profile tab
  (`pip install tensorboard-plugin-profile`) and Perfetto read. Each host writes its own file."""
  def __init__(self, num_steps, log_dir):
    self.num_steps, self.log_dir = num_steps, log_dir
    self.first_step = None  # the step at which the trace started; None before, -1 after it ended
    self.last_step = None

  def after_call(self, step, outputs):
    """Called after each jitted call that ends at `step`; `outputs` are waited for at the window's edges."""
    import jax
    self.last_step = step
    if not self.num_steps or self.first_step == -1:
      return
    if self.first_step is None:
      jax.block_until_ready(outputs)
      jax.profiler.start_trace(self.log_dir)
      self.first_step = step
    elif step - self.first_step >= self.num_steps:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self):
    """Ends the trace if one is running (at the window's end, or when the run ends or fails inside it)."""
    import jax
    if self.first_step is None or self.first_step == -1:
      return
    jax.profiler.stop_trace()
    logging.info('profiled steps %d to %d: %s/plugins/profile', self.first_step + 1, self.last_step, self.log_dir)
    self.first_step = -1
