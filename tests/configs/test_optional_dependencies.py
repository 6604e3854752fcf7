"""An optional dependency that is not installed (torch for torch checkpoint files, tensorflow-datasets for
data.source='tfds') is one line naming the install command, in the library and from main.py."""
import sys

import pytest

from input_pipeline.sources import TfdsSource
from models.weight_files import read_state_dict
from tests.configs.test_config import run_main

TORCH_CPU = 'pip install torch --index-url https://download.pytorch.org/whl/cpu'
TFDS = 'pip install -r requirements-tfds.txt'


def test_a_torch_file_without_torch_names_the_cpu_install(tmp_path, monkeypatch):
  (tmp_path / 'model.pt').write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ModuleNotFoundError
  with pytest.raises(ImportError, match=f'reading {tmp_path}/model.pt needs torch.*{TORCH_CPU}') as error:
    read_state_dict(str(tmp_path / 'model.pt'))
  assert error.value.name == 'torch' and '\n' not in str(error.value)


def test_tfds_without_tensorflow_datasets_names_the_requirements_file(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(ImportError, match=TFDS):
    TfdsSource('mnist', 'train', 28, channels=1)


@pytest.mark.parametrize('module, args, message', [
    ('torch', ['--mode=import', '--weights={tmp}/model.pt'],
     'reading {tmp}/model.pt needs torch, which is not installed (a CPU build is enough: ' + TORCH_CPU + ')'),
    ('tensorflow_datasets', ['--config.data.source=tfds', '--config.data.name=mnist'
                            ], "config.data.source='tfds' needs tensorflow-datasets and array_record: " + TFDS),
])
def test_main_says_which_package_to_install_in_one_line(tmp_path, module, args, message):
  (tmp_path / 'model.pt').write_bytes(b'not read')
  result = run_main('--config=tests/tiny_config.py', f'--workdir={tmp_path}/w', *[a.format(tmp=tmp_path) for a in args],
                    without=[module])
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.splitlines()[-1]
  assert last.startswith(f'error: {message.format(tmp=tmp_path)}'), last
  assert not (tmp_path / 'w').exists()


def test_main_keeps_the_traceback_of_a_project_module_that_does_not_import(tmp_path):
  """A broken import inside the project is a bug, not a missing package: its traceback stays."""
  result = run_main('--config=tests/tiny_config.py', f'--workdir={tmp_path}/w', without=['jobs.train'])
  assert result.returncode != 0 and 'Traceback' in result.stderr
  assert 'ModuleNotFoundError: import of jobs.train halted' in result.stderr
