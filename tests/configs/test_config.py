"""Configs: every file loads and validates; a wrong field or value stops main.py at start, naming it."""
import os
import re
import subprocess
import sys

import pytest

from configs.validate import validate_config
from configs.dit import dit_config
from configs.quickstart import get_config as quickstart_config
from configs.unet_cifar10 import get_config as unet_cifar10_config
from tests.processes import env_with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(*args, without=(), **kwargs):
  """python main.py args; `without`: modules made unimportable first (as if not installed)."""
  env = env_with_devices(1)
  command = [sys.executable, 'main.py', *args]
  if without:
    command[1:2] = [
        '-c', f'import runpy, sys; sys.modules.update(dict.fromkeys({list(without)!r})); '
        "sys.argv[0] = 'main.py'; runpy.run_path('main.py', run_name='__main__')"
    ]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, **kwargs)


@pytest.mark.parametrize('variant', ['S', 'B', 'L', 'XL'])
@pytest.mark.parametrize('patch', ['2', '4', '8'])
def test_dit_configs_validate(variant, patch):
  c = validate_config(dit_config(variant, patch))
  assert c.model.patch_size == int(patch) and c.data.channels == 4 and c.train.batch_size == 256
  assert c.optim.learning_rate == 1e-4 and c.optim.weight_decay == 0 and c.optim.ema_decay == 0.9999


def test_bad_patch_size():
  with pytest.raises(ValueError, match='patch size must be 2, 4 or 8'):
    dit_config('B', '3')


def test_other_configs_validate():
  validate_config(quickstart_config())
  validate_config(unet_cifar10_config())


@pytest.mark.parametrize('path,value,message', [
    ('diffusion.schedule', 'cosin', "config.diffusion.schedule='cosin' is not valid"),
    ('sample.sampler', 'plms', "config.sample.sampler='plms' is not valid"),
    ('train.batch_size', 0, 'config.train.batch_size=0 must be positive'),
    ('optim.ema_decay', 1.5, 'config.optim.ema_decay=1.5'),
    ('model.name', 'vit', "config.model.name='vit' is not valid"),
    ('train.remat_policy', 'dot', "config.train.remat_policy='dot' is not valid"),
    ('sample.guidance_channels', 2, 'config.sample.guidance_channels=2 must be in [0, data.channels=1]'),
    ('sample.eta', 1.5, 'config.sample.eta=1.5 must be in [0, 1]'),
    ('sample.num_steps', 1001, "config.sample.num_steps=1001: sampler 'ddim' with spacing 'leading' takes at most "
     '1000 steps of the config.diffusion.num_timesteps=1000 timesteps'),
    ('data.image_size', 9, 'config.data.image_size=9 is not a multiple of 2: config.model.channel_mult=(1, 2) '
     'halves the image 1 times'),
])
def test_invalid_values_are_named(path, value, message):
  c = quickstart_config('long')  # DDIM on leading timesteps
  section, field = path.split('.')
  c[section][field] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    validate_config(c)


def test_dit_image_side_and_dpm_solver_steps_are_checked():
  c = dit_config('B', '4')
  c.data.image_size = 30
  with pytest.raises(ValueError, match=r'config\.data\.image_size=30 is not a multiple of config\.model\.patch_size=4'):
    validate_config(c)
  c.data.image_size, c.sample.sampler, c.sample.spacing, c.sample.num_steps = 32, 'dpm++2m', 'linspace', 1000
  with pytest.raises(ValueError, match=r"sampler 'dpm\+\+2m' with spacing 'linspace' takes at most 999 steps"):
    validate_config(c)
  c.sample.spacing = 'trailing'
  validate_config(c)


def test_main_refuses_a_flag_its_mode_does_not_read(tmp_path):
  result = run_main('--mode=sample', '--config=configs/quickstart.py', f'--workdir={tmp_path}/w',
                    f'--output={tmp_path}/mine.npz')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert ('--mode=sample does not read --output (fid_stats): each is read only by the modes in parentheses; name the '
          'samples file with --config.sample.output') in result.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_flow_objective_needs_a_flow_sampler():
  c = quickstart_config()
  c.diffusion.objective = 'flow'
  with pytest.raises(ValueError, match="does not apply to config.diffusion.objective='flow'"):
    validate_config(c)


def test_main_rejects_unknown_field_and_bad_value(tmp_path):
  result = run_main('--config=configs/quickstart.py', f'--workdir={tmp_path}/w', '--config.train.batch_sise=3')
  assert result.returncode != 0
  assert 'batch_sise' in result.stderr
  result = run_main('--config=configs/quickstart.py', f'--workdir={tmp_path}/w', '--config.diffusion.schedule=cosin')
  assert result.returncode != 0
  assert "config.diffusion.schedule='cosin' is not valid" in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'w')  # nothing written


@pytest.mark.parametrize('args, line', [
    (['--config=configs/nope.py'], "--config=configs/nope.py: there is no file 'configs/nope.py'"),
    (['--config=configs/nope.py:B', '--config.train.batch_size=3'
     ], "--config=configs/nope.py:B: there is no file 'configs/nope.py'"),
    (['--config=configs/quickstart.py', '--config.train.bach_size=3'
     ], '--config.train.bach_size=3: config.train has no field \'bach_size\'; did you mean "batch_size"?'),
    (['--config=configs/quickstart.py', '--config.trian.batch_size=3'
     ], '--config.trian.batch_size=3: config has no field \'trian\'; did you mean "train"?'),
    (['--config=configs/quickstart.py', '--config.model.remat=True'
     ], '--config.model.remat=True: config.model.remat is set from config.train.remat; set that instead'),
])
def test_main_names_a_missing_config_file_or_unknown_field_in_one_line(tmp_path, args, line):
  result = run_main(*args, f'--workdir={tmp_path}/w')
  assert result.returncode != 0
  assert result.stderr.splitlines() == [f'error: {line}']
  assert not os.path.exists(tmp_path / 'w')


def test_main_names_a_missing_image_folder(tmp_path):
  result = run_main('--config=configs/quickstart.py', f'--workdir={tmp_path}/w', '--config.data.source=image_folder',
                    f'--config.data.path={tmp_path}/nowhere')
  assert result.returncode != 0
  assert f"config.data.path='{tmp_path}/nowhere' is not a directory" in result.stderr
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.parametrize('fields, message', [
    ({'every_step': 5}, r"config\.evals\.digits has unknown fields \['every_step'\]; 'digits' takes every_steps, "
     r'num_samples, seed'),
    ({'num_samples': 0}, r'config\.evals\.digits: every_steps must be >= 0 and num_samples > 0'),
])
def test_evaluator_fields_are_checked(fields, message):
  c = quickstart_config()
  c.evals.digits.update(fields)
  with pytest.raises(ValueError, match=message):
    validate_config(c)


def test_inception_evaluator_fields_are_checked():
  import ml_collections  # pylint: disable=import-outside-toplevel
  c = quickstart_config()
  c.evals.inception = ml_collections.ConfigDict(
      {'inception_weights': 'w.msgpack', 'reference_npz': 'r.npz', 'preprocessing': 'tensorflow'})
  validate_config(c)
  c.evals.inception.preprocessing = 'tf'
  with pytest.raises(ValueError, match=r"config\.evals\.inception\.preprocessing='tf': choose one of pytorch_fid, "
                     r'tensorflow'):
    validate_config(c)
  del c.evals.inception['preprocessing']
  c.evals.inception.refrence_npz = 'r.npz'
  with pytest.raises(ValueError, match=r"config\.evals\.inception has unknown fields \['refrence_npz'\]"):
    validate_config(c)


def test_a_config_json_written_before_newer_fields_loads_with_their_defaults(tmp_path):
  """A classifier workdir trained by an older version lacks fields added since (here three); guided sampling reads
  its config.json over the current defaults."""
  import json  # pylint: disable=import-outside-toplevel
  from configs.validate import config_from_json  # pylint: disable=import-outside-toplevel
  from configs.digits_classifier import get_config  # pylint: disable=import-outside-toplevel
  stored = json.loads(validate_config(get_config()).to_json())
  for section, field in (('diffusion', 'loss_weighting'), ('diffusion', 'min_snr_gamma'), ('sample',
                                                                                           'low_res_samples')):
    del stored[section][field]
  stored['data']['image_size'] = 16
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  config = config_from_json(str(tmp_path / 'config.json'))
  assert (config.diffusion.loss_weighting, config.sample.low_res_samples, config.data.image_size) == ('uniform', '', 16)
  assert config.model.name == 'adm_classifier'
  assert tuple(config.model.channel_mult) == tuple(get_config().model.channel_mult)
