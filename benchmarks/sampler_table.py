"""Sampling steps versus quality: every sampler at several step counts on one trained model.

python benchmarks/sampler_table.py --config=configs/quickstart.py --workdir=runs/quickstart \
    --num_samples=1000 --steps=10,20,50,100,250 --output=docs/sampler_table.md

For each (sampler, steps) it generates --num_samples class-balanced samples from the newest
checkpoint's EMA parameters with the config's guidance scale, scores them with the digits
classifier (evaluation/digits.py: Fréchet distance in classifier features, fraction recognised as
the intended class) and times the sampling (compilation excluded, done ahead of time). Rows are
appended to --output (a markdown table) as they finish, so a long run shows progress. A first row
scores --num_samples real digits: the floor of the Fréchet distance at that sample size.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs.validate import validate_config
from evaluation.digits import digits_metrics
from input_pipeline.sources import load_digits
from jobs.sample import generate_samples, initial_noise, make_generate_fn
from jobs.restore import restore_for_inference
from jobs.conditions import default_conditions, model_condition

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a script: importing time_cell (tests) must not clash with main.py's --config."""
  config_flags.DEFINE_config_file('config', 'configs/quickstart.py', 'Config of the trained model.', lock_config=False)
  flags.DEFINE_string('workdir', 'runs/quickstart', 'Workdir holding the checkpoints.')
  flags.DEFINE_list('samplers', ['ddpm', 'ddim', 'dpm++2m', 'euler', 'heun'], 'Samplers to compare.')
  flags.DEFINE_list('steps', ['10', '20', '50', '100', '250'], 'Step counts.')
  flags.DEFINE_integer('num_samples', 1000, 'Samples per (sampler, steps) cell.')
  flags.DEFINE_integer('seed', 12345, 'Seed of the initial noise (the same for every cell).')
  flags.DEFINE_string('output', 'docs/sampler_table.md', 'Markdown table written row by row.')


def network_evaluations(sampler, steps):
  """Heun calls the network twice per step except on the last one; the others once per step."""
  return 2 * steps - 1 if sampler == 'heun' else steps


def sampler_label(config, sampler):
  flow = config.diffusion.objective == 'flow'
  if sampler in ('ddim', 'ddpm'):
    return f'{sampler} ({config.sample.spacing})'
  if sampler == 'dpm++2m':
    return f'dpm++2m ({config.sample.spacing})'
  churn = f', S_churn {config.sample.s_churn:g}' if config.sample.s_churn and not flow else ''
  return f'{sampler} ({"flow" if flow else "Karras sigmas"}{churn})'


def real_digits_row(num_samples, seed):
  """Scores num_samples real digits (8x8, as the quickstart sees them) drawn with replacement."""
  digits, labels = load_digits()
  idx = np.random.default_rng(seed).choice(len(labels), num_samples, replace=True)
  images = np.round(digits[idx] / 16.0 * 255).astype(np.uint8)[..., None]
  return digits_metrics(images, labels[idx])


def time_cell(config, model, params, mesh, num_samples, seed):
  """(images, labels, seconds to sample, seconds to compile) for config.sample's sampler."""
  generate_fn = make_generate_fn(config, model, mesh)
  batch_size = min(config.sample.batch_size, num_samples)
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  cond = {k: jnp.asarray(v) for k, v in model_condition(default_conditions(batch_size, config), config).items()}
  t0 = time.perf_counter()
  compiled = generate_fn.compile_for(params, cond, initial_noise(seed, 0, batch_size, shape), jax.random.PRNGKey(0),
                                     jnp.float32(config.sample.guidance_scale))
  compile_seconds = time.perf_counter() - t0

  def run(params, batch_cond, noise, rng, scale):
    return compiled(params, {k: jnp.asarray(v) for k, v in batch_cond.items()}, noise, rng, scale)

  t0 = time.perf_counter()
  images, cond = generate_samples(config, run, params, mesh, num_samples, seed, batch_size=batch_size)
  return images, cond['y'], time.perf_counter() - t0, compile_seconds


def main(argv):
  del argv
  config = FLAGS.config
  model, params, step, mesh = restore_for_inference(config, os.path.abspath(FLAGS.workdir),
                                                    use_ema=config.sample.use_ema)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  with open(FLAGS.output, 'w') as f:
    f.write(f'Model: {config_flags.get_config_filename(FLAGS["config"])} step {step}, objective '
            f'{config.diffusion.objective}, guidance {config.sample.guidance_scale}, {FLAGS.num_samples} samples, '
            f'{jax.devices()[0].platform} ({jax.device_count()} device(s)).\n\n')
    f.write('| sampler | steps | network evals | digits FD | recognised | sampling s | compile s |\n')
    f.write('|---|---:|---:|---:|---:|---:|---:|\n')
    real = real_digits_row(FLAGS.num_samples, FLAGS.seed)
    f.write(f'| real digits | - | - | {real["digits_fd"]:.3f} | {real["digits_accuracy"]:.3f} | - | - |\n')
  print(f'real digits: {real}', flush=True)
  for steps in map(int, FLAGS.steps):
    for sampler in FLAGS.samplers:
      config.sample.sampler, config.sample.num_steps = sampler, steps
      validate_config(config)
      images, labels, seconds, compile_seconds = time_cell(config, model, params, mesh, FLAGS.num_samples, FLAGS.seed)
      metrics = digits_metrics(images, labels)
      row = (f'| {sampler_label(config, sampler)} | {steps} | {network_evaluations(sampler, steps)} | '
             f'{metrics["digits_fd"]:.3f} | {metrics["digits_accuracy"]:.3f} | {seconds:.1f} | '
             f'{compile_seconds:.1f} |\n')
      with open(FLAGS.output, 'a') as f:
        f.write(row)
      print(row, end='', flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
