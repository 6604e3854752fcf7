"""--mode=eval: samples -> every evaluator in config.evals (whatever their every_steps) ->
<workdir>/eval/<name>.json, TensorBoard and <workdir>/metrics.jsonl.

The samples are an ADM-layout npz (`arr_0` uint8 NHWC, `arr_1` labels, optionally `prompts` captions), or are
drawn fresh from the newest checkpoint with config.sample's settings (sampler, steps, guidance, num_samples,
seed), exactly as `--mode=sample` would draw them. An existing result is not replaced unless --overwrite, and
every weight file is checked before the long part starts.
"""
import datetime
import logging
import os
import time

import jax

from evaluation import create_evaluator
from input_pipeline.files import load_samples_npz, refuse_existing, write_json
from jobs.restore import restore_for_inference
from jobs.sample import generate_samples, make_generate_fn
from training.writers import create_writer

EVAL_DIR = 'eval'


def create_evaluators(config):
  """{name: evaluator} for every entry of config.evals; missing weight or reference files fail here."""
  if not config.evals:
    raise ValueError('config.evals is empty, so there is nothing to evaluate: add an evaluator to the config, '
                     "e.g. c.evals.digits = ml_collections.ConfigDict({'num_samples': 1000}) (docs/evaluation.md)")
  return {name: create_evaluator(name, config, eval_config) for name, eval_config in config.evals.items()}


def eval_result_path(workdir, name):
  return os.path.join(workdir, EVAL_DIR, f'{name}.json')


def samples_from_checkpoint(config, model, params, mesh):
  """config.sample.num_samples images drawn as `--mode=sample` draws them, and their conditions."""
  generate_fn = make_generate_fn(config, model, mesh)
  return generate_samples(config, generate_fn, params, mesh, config.sample.num_samples, config.sample.seed,
                          progress=True)


def evaluate_all(evaluators, images, cond):
  """(flat {metric: float}, {evaluator name: seconds}); two evaluators giving one metric name is an error."""
  metrics, seconds = {}, {}
  for name, evaluator in evaluators.items():
    start = time.time()
    result = evaluator(images, cond)
    seconds[name] = time.time() - start
    clash = set(result) & set(metrics)
    if clash:
      raise ValueError(f'evaluator {name!r} reports {sorted(clash)}, which another evaluator reported too')
    metrics.update({key: float(value) for key, value in result.items()})
    logging.info('%s: %s (%.1f s)', name, ', '.join(f'{k}={v:.6g}' for k, v in sorted(result.items())), seconds[name])
  return metrics, seconds


def write_eval_scalars(workdir, step, metrics, seconds):
  """`eval/<metric>` and `eval/<evaluator>_seconds` at `step`, the tags training uses, to TensorBoard and
  metrics.jsonl."""
  writer = create_writer(workdir)
  try:
    writer.write_scalars(
        step, {**{f'eval/{k}': v for k, v in metrics.items()}, **{f'eval/{k}_seconds': v for k, v in seconds.items()}})
    writer.flush()
  finally:
    writer.close()


def run_eval_job(config, workdir, samples=None, name=None, overwrite=False):
  """--mode=eval: evaluates `samples` (an npz) or fresh samples of the newest checkpoint; returns the record.

  The result goes to <workdir>/eval/<name>.json, name defaulting to the npz's file name without extension,
  or to step_<checkpoint step> for fresh samples (step_<snapshot step>_ema<sigma_rel> for a post-hoc EMA); scalars are written at the checkpoint's step (0 for an npz).
  """
  hint = '--eval_name=<another name>'
  if samples:
    name = name or os.path.splitext(os.path.basename(samples))[0]
  if name:
    refuse_existing(eval_result_path(workdir, name), overwrite, hint)
  evaluators = create_evaluators(config)
  if samples:
    images, cond = load_samples_npz(samples)
    step, origin = 0, {'samples': os.path.abspath(samples)}
  else:
    model, params, step, mesh = restore_for_inference(config, workdir, use_ema=config.sample.use_ema)
    sigma_rel = config.sample.ema_sigma_rel  # a post-hoc EMA (training/ema.py) of that width, at snapshot `step`
    name = name or f'step_{step:08d}' + (f'_ema{sigma_rel:g}' if sigma_rel else '')
    refuse_existing(eval_result_path(workdir, name), overwrite, hint)
    logging.info('sampling %d images with %s, %d steps, guidance %.2f, from the checkpoint of step %d',
                 config.sample.num_samples, config.sample.sampler, config.sample.num_steps,
                 config.sample.guidance_scale, step)
    images, cond = samples_from_checkpoint(config, model, params, mesh)
    origin = {'checkpoint_step': int(step), 'sample_config': config.sample.to_dict()}
  metrics, seconds = evaluate_all(evaluators, images, cond)
  record = {
      'name': name, 'metrics': metrics, 'seconds': seconds, 'num_samples': int(len(images)),
      'image_shape': list(images.shape[1:]), 'evals': config.evals.to_dict(),
      'written': datetime.datetime.now().isoformat(timespec='seconds'), **origin
  }
  if jax.process_index() == 0:
    path = eval_result_path(workdir, name)
    write_json(path, record)
    write_eval_scalars(workdir, step, metrics, seconds)
    logging.info('wrote %s', path)
  return record
