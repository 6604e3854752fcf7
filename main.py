"""Entry point: python main.py --config=configs/<name>.py[:arg] --workdir=DIR [--mode=train|sample|eval|fid_stats|encode|edit|import].

Any config field can be overridden on the command line, e.g. --config.train.batch_size=64.
"""
import logging
import os
import re

from absl import app, flags
from ml_collections import config_flags

from models import SET_ELSEWHERE

config_flags.DEFINE_config_file('config', None, 'Path to a config file, with an optional :argument.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events, samples and metrics.')
flags.DEFINE_enum(
    'mode', 'train', ['train', 'sample', 'eval', 'fid_stats', 'encode', 'edit', 'import'],
    'What to do (encode: config.data.pixels -> VAE latents in config.data.path; edit: img2img and '
    'inpainting of --images, jobs/edit.py; import: a public checkpoint --weights -> the step-0 '
    'checkpoint of --workdir, jobs/import_weights.py).')
flags.DEFINE_bool('overwrite', False, 'Allow --mode=sample, eval, fid_stats and edit to replace an existing output '
                  'file.')
# --mode=eval and --mode=fid_stats (jobs/eval.py, jobs/fid_stats.py, docs/evaluation.md)
flags.DEFINE_string(
    'samples', None, 'eval: an npz of samples (arr_0 uint8 NHWC, arr_1 labels); default: draw '
    'config.sample.num_samples from the newest checkpoint.')
flags.DEFINE_string(
    'eval_name', None, 'eval: results go to <workdir>/eval/<eval_name>.json (default: the npz '
    'name, or step_<checkpoint step>).')
flags.DEFINE_string(
    'images', None, 'fid_stats: an image folder or an npz (arr_0) instead of the config dataset; '
    'edit: the images to edit (a file, a folder or an npz).')
flags.DEFINE_string('output', None, 'fid_stats: the reference npz to write (default: '
                    'config.evals.inception.reference_npz).')
flags.DEFINE_string(
    'inception_weights', None, 'fid_stats: converted FID Inception weights (default: '
    'config.evals.inception.inception_weights).')
flags.DEFINE_integer('num_images', 0, 'fid_stats: use a fixed random subset of this many images (0: all).')
flags.DEFINE_bool('keep_images', False, 'fid_stats: store the images as arr_0 too (precision/recall needs them).')
# --mode=edit (jobs/edit.py)
flags.DEFINE_string('mask', None, 'edit: inpainting mask image, white = repaint, black = keep (none: img2img).')
flags.DEFINE_float(
    'strength', None, 'edit: fraction of the sampler steps that run, in [0, 1] (default 0.6 for '
    'img2img, 1.0 for inpainting).')
flags.DEFINE_string(
    'labels', None, 'edit: class label(s), one for all images or comma-separated, one per image '
    '(none: the null label).')
flags.DEFINE_string('prompt', None, 'edit: the prompt, for text-conditional models.')
flags.DEFINE_string('edit_name', None, 'edit: outputs go to <workdir>/edits/<edit_name>.npz and .png.')
# --mode=import (jobs/import_weights.py)
flags.DEFINE_string(
    'weights', None, 'import: the public checkpoint file (.pt, .pth, .bin, .safetensors or .npz) of '
    'the config\'s model, e.g. DiT-XL-2-256x256.pt for configs/dit_xl.py.')
flags.DEFINE_bool(
    'jax_distributed', False, 'Call jax.distributed.initialize() first (multi-host runs; '
    'coordinator and process ids come from the environment: SLURM, Open MPI or TPU metadata, or '
    'JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID).')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS

# The modes that read each mode-specific flag; given to any other mode, it is refused rather than ignored.
MODE_FLAGS = {
    'overwrite': ('sample', 'eval', 'fid_stats', 'edit'), 'samples': ('eval',), 'eval_name': ('eval',),
    'images': ('fid_stats', 'edit'), 'output': ('fid_stats',), 'inception_weights': ('fid_stats',), 'num_images':
        ('fid_stats',), 'keep_images': ('fid_stats',), 'mask': ('edit',), 'strength': ('edit',), 'labels': ('edit',),
    'prompt': ('edit',), 'edit_name': ('edit',), 'weights': ('import',)
}


def check_mode_flags(mode, given):
  """Raises ValueError naming the `given` flags (those set on the command line) that `mode` does not read."""
  unread = [
      f'--{name} ({"/".join(modes)})' for name, modes in MODE_FLAGS.items() if name in given and mode not in modes
  ]
  if unread:
    hint = '; name the samples file with --config.sample.output' if mode == 'sample' and 'output' in given else ''
    raise ValueError(f'--mode={mode} does not read {", ".join(unread)}: each is read only by the modes in '
                     f'parentheses{hint}')


class _QuietLibraries(logging.Filter):
  """Drops the per-save INFO chatter of orbax (warnings and errors still show)."""
  def filter(self, record):
    return record.levelno >= logging.WARNING or 'orbax' not in record.pathname


def distributed_settings(environ):
  """jax.distributed.initialize arguments from JAX_NUM_PROCESSES and JAX_PROCESS_ID (with jax's own
  JAX_COORDINATOR_ADDRESS), for launchers jax cannot detect; none set: jax detects SLURM, Open MPI or TPUs."""
  settings = {}
  for key, name in (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID')):
    if environ.get(name):
      try:
        settings[key] = int(environ[name])
      except ValueError as e:
        raise ValueError(f'{name}={environ[name]!r} is not an integer') from e
  if settings and (len(settings) != 2 or not environ.get('JAX_COORDINATOR_ADDRESS')):
    raise ValueError('--jax_distributed without cluster detection needs all of JAX_COORDINATOR_ADDRESS (host:port of '
                     'process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID')
  return settings


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  check_mode_flags(FLAGS.mode, {name for name in MODE_FLAGS if FLAGS[name].present})
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  from configs.validate import validate_config
  config = validate_config(FLAGS.config)

  import jax
  if FLAGS.jax_distributed:
    jax.distributed.initialize(**distributed_settings(os.environ))
  logging.info('JAX %s, process %d of %d, %d local / %d global devices (%s)', jax.__version__, jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  workdir = os.path.abspath(FLAGS.workdir)
  from models.conditioning import is_classifier
  if is_classifier(config) and FLAGS.mode in ('sample', 'eval', 'edit'):
    raise ValueError(f'config.model.name={config.model.name!r} is a noisy classifier, which draws no samples; '
                     f'it guides a diffusion model: --mode={FLAGS.mode} with that model\'s config and '
                     f'--config.sample.classifier_workdir={FLAGS.workdir}')
  if config.model.get('low_res_size', 0) and FLAGS.mode == 'edit':
    raise ValueError('--mode=edit does not take a super-resolution model (config.model.low_res_size > 0); '
                     '--mode=sample upsamples config.sample.low_res_samples')
  if FLAGS.mode == 'train':
    from jobs import train
    train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == 'sample':
    from jobs import sample
    sample.run_sample_job(config, workdir, overwrite=FLAGS.overwrite)
  elif FLAGS.mode == 'eval':
    from jobs import eval as eval_job
    eval_job.run_eval_job(config, workdir, samples=FLAGS.samples, name=FLAGS.eval_name, overwrite=FLAGS.overwrite)
  elif FLAGS.mode == 'fid_stats':
    from jobs import fid_stats
    fid_stats.run_fid_stats_job(config, workdir, output=FLAGS.output, images=FLAGS.images,
                                inception_weights=FLAGS.inception_weights, num_images=FLAGS.num_images,
                                keep_images=FLAGS.keep_images, overwrite=FLAGS.overwrite)
  elif FLAGS.mode == 'encode':
    from jobs import encode
    encode.run_encode_job(config, workdir)
  elif FLAGS.mode == 'edit':
    from jobs import edit
    edit.run_edit_job(config, workdir, FLAGS.images, mask=FLAGS.mask, strength=FLAGS.strength, labels=FLAGS.labels,
                      prompt=FLAGS.prompt, name=FLAGS.edit_name, overwrite=FLAGS.overwrite)
  elif FLAGS.mode == 'import':
    from jobs import import_weights
    import_weights.run_import_job(config, workdir, FLAGS.weights)


def config_argument(argv):
  """The value given to --config in argv ('' if none)."""
  for i, arg in enumerate(argv):
    if re.match(r'--?config=', arg):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def unknown_field_problem(argv, error):
  """One line naming the override of a config field that does not exist, with ml_collections' 'did you mean' hint
  (both are in the chain of KeyErrors under `error`); None if `error` is not that."""
  keys, suggestion = [], None
  while error is not None:
    if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
      keys.append(error.args[0])
      suggestion = suggestion or re.search(r'Did you mean "([^"]+)"', error.args[0])
    error = error.__cause__ or error.__context__
  if not keys:
    return None
  key, hint = keys[-1], f'; did you mean "{suggestion[1]}"?' if suggestion else ''  # the innermost: the bare name
  for arg in argv:
    override = re.match(r'--?(no)?config\.([^=]+)', arg)
    parts = override[2].split('.') if override else []
    if key in parts:
      section = '.'.join(['config'] + parts[:parts.index(key)])
      if section == 'config.model' and key in SET_ELSEWHERE:
        return f'{arg}: config.model.{key} is set from {SET_ELSEWHERE[key]}; set that instead'
      return f'{arg}: {section} has no field {key!r}{hint}'
  return ' '.join(key.split())


def parse_flags(argv):
  """absl's flag parsing (its errors: a line and a usage hint), except that a config file that does not load and an
  override of a config field that does not exist are a ValueError naming them, not a traceback from ml_collections."""
  config = config_argument(argv)
  if config and not os.path.isfile(config.split(':', 1)[0]):
    raise ValueError(f'--config={config}: there is no file {config.split(":", 1)[0]!r}')
  try:
    remaining = app.parse_flags_with_usage(argv)
    FLAGS.config.keys()  # ml_collections defers an error in loading the file to the first use of the config
  except OSError as e:  # get_config() itself failed to read a file
    raise ValueError(f'--config={config} did not load: {" ".join(str(e.__cause__ or e).split())}') from None
  except (AttributeError, KeyError) as e:
    problem = unknown_field_problem(argv, e)
    if problem is None:
      raise
    raise ValueError(problem) from None
  return remaining


def is_missing_dependency(error):
  """Whether an ImportError is about a package outside this project (torch, tensorflow_datasets: an optional
  dependency not installed); one of the project's own modules failing to import is a bug and keeps its traceback."""
  top = (error.name or '').split('.')[0]
  here = os.path.dirname(os.path.abspath(__file__))
  return not top or not (os.path.exists(os.path.join(here, top)) or os.path.exists(os.path.join(here, f'{top}.py')))


def run():
  try:
    app.run(main, flags_parser=parse_flags)
  except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
    # Bad input: one clear line, no traceback, nothing written.
    raise SystemExit(f'error: {e}') from None
  except ImportError as e:
    if not is_missing_dependency(e):
      raise
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  run()
