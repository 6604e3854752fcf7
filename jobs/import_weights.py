"""--mode=import: start a workdir from a public checkpoint of a model this codebase implements.

  python main.py --mode=import --config=configs/dit_xl.py --workdir=runs/dit_xl_2_256 --weights=DiT-XL-2-256x256.pt

The file is converted by the model's converter (CONVERTERS) into this codebase's parameters, checked
name by name and shape by shape against the model the config builds, and written as the step-0
checkpoint of the workdir, parameters and EMA alike, with a fresh optimizer state. Then
`--mode=sample` and `--mode=eval` use those weights, and `--mode=train` fine-tunes from them. A workdir
that already holds checkpoints is refused and left as it is.
"""
import logging

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from jobs.restore import setup, write_config
from models import adm_convert, dit_convert
from models.weight_files import key_and_shape_problems, read_state_dict
from training.checkpoints import model_signature
from training.state import count_params, state_from_params

# config.model.name -> the module converting its public checkpoints. Each has WHERE_TO_GET (where the files
# are published) and params_from_state_dict(state_dict, config) -> the model's params as numpy arrays, which
# raises ValueError naming the keys that do not fit.
CONVERTERS = {'dit': dit_convert, 'unet': adm_convert, 'adm_classifier': adm_convert}


def converter_for(config):
  name = config.model.name
  if name not in CONVERTERS:
    raise ValueError(f'--mode=import has no converter for config.model.name={name!r}; it converts checkpoints of '
                     f'{sorted(CONVERTERS)}')
  return CONVERTERS[name]


def params_mismatch(params, abstract_params):
  """'' if `params` has exactly the names and shapes of `abstract_params`, else what differs."""
  got = {'/'.join(k): np.shape(v) for k, v in flatten_dict(params).items()}
  want = {'/'.join(k): v.shape for k, v in flatten_dict(abstract_params).items()}
  return '; '.join(key_and_shape_problems(got, want))


def write_pretrained_checkpoint(config, workdir, params):
  """Writes `params` (a numpy tree of the model's params) as the step-0 checkpoint of workdir: params and
  EMA both, optimizer state fresh. Refuses a workdir holding checkpoints, and params that do not fit."""
  model, tx, mesh, abstract, shardings, store = setup(config, workdir)
  try:
    if store.steps():
      raise FileExistsError(f'{store.directory} already holds the checkpoints of steps {store.steps()}; import '
                            'into a new --workdir (nothing was changed)')
    mismatch = params_mismatch(params, abstract.params)
    if mismatch:
      raise ValueError(f'the converted weights do not fit the model of this config ({config.model.name}): '
                       f'{mismatch}. Check the config variant (size, patch, image size, classes, learn_sigma)')
    place = lambda value, sharding, like: jax.device_put(np.asarray(value, like.dtype), sharding)
    params = jax.tree.map(place, params, shardings.params, abstract.params)  # the host copies are freed here
    # the state is built around the imported params (donated): no random initialisation to hold beside them
    rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]  # as train_state.init_state's
    state = jax.jit(lambda p: state_from_params(p, tx, rng, len(config.optim.ema_sigma_rels)), out_shardings=shardings,
                    donate_argnums=0)(params)
    del params
    store.save(0, state, model_signature(config))
    if jax.process_index() == 0:
      write_config(config, workdir)
    logging.info('wrote %.2fM imported parameters as the step-0 checkpoint (params and EMA) of %s',
                 count_params(state.params) / 1e6, store.directory)
  finally:
    store.close()


def run_import_job(config, workdir, weights):
  if not weights:
    raise ValueError('--mode=import needs --weights=PATH, the checkpoint file to convert')
  converter = converter_for(config)
  # no name holds the file's arrays here, so they are freed once placed on the devices (XL/2: 2.7 GB)
  write_pretrained_checkpoint(
      config, workdir,
      converter.params_from_state_dict(read_state_dict(weights, f'Get it from {converter.WHERE_TO_GET}.'), config))
