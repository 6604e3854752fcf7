"""Entry point: python main.py --config=configs/<name>.py[:arg] --workdir=DIR [--mode=train|sample|eval].

Any config field can be overridden on the command line, e.g. --config.train.batch_size=64.
"""
import logging
import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Path to a config file, with an optional :argument.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events, samples and metrics.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample'], 'What to do.')
flags.DEFINE_bool('overwrite', False, 'Allow --mode=sample to replace an existing output file.')
flags.DEFINE_bool('jax_distributed', False, 'Call jax.distributed.initialize() first (multi-host runs; '
                  'coordinator and process ids come from the environment, e.g. SLURM or TPU metadata).')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


class _QuietLibraries(logging.Filter):
  """Drops the per-save INFO chatter of orbax (warnings and errors still show)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  from configs.common import validate_config
  config = validate_config(FLAGS.config)

  import jax
  if FLAGS.jax_distributed:
    jax.distributed.initialize()
  logging.info('JAX %s, process %d of %d, %d local / %d global devices (%s)', jax.__version__, jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  workdir = os.path.abspath(FLAGS.workdir)
  if FLAGS.mode == 'train':
    import train
    train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == 'sample':
    import sample
    sample.run_sample_job(config, workdir, overwrite=FLAGS.overwrite)


def run():
  try:
    app.run(main)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    # Bad input: one clear line, no traceback, nothing written.
    logging.error('%s', e)
    raise SystemExit(f'error: {e}')


if __name__ == '__main__':
  run()
