"""models.build_model: config.model fields it takes from elsewhere are refused by name; the cuDNN fallback notice is
one INFO line per CPU process."""
import logging

import jax
import pytest

from configs.dit import dit_config
from configs.quickstart import get_config as quickstart_config
from configs.validate import validate_config
from models import build_model, layers
from models.shapes import dummy_inputs


@pytest.mark.parametrize('field, value, where', [
    ('remat', True, 'config.train.remat'),
    ('remat_policy', 'dots', 'config.train.remat_policy'),
    ('dtype', 'bfloat16', 'config.train.compute_dtype'),
    ('num_classes', 10, 'config.data.num_classes'),
    ('image_size', 28, 'config.data.image_size'),
    ('channels', 1, 'config.data.channels'),
    ('learn_sigma', True, 'config.diffusion.learn_sigma'),
])
def test_a_model_field_set_from_elsewhere_is_named(field, value, where):
  c = quickstart_config()
  c.model.unlock()[field] = value  # as a config file can (the command line cannot add fields)
  with pytest.raises(ValueError) as error:
    build_model(c)
  assert str(error.value) == f'config.model.{field} is set from {where}; set that instead'


def test_several_fields_set_from_elsewhere_and_unknown_fields():
  c = quickstart_config()
  c.model.unlock().update(remat=True, dtype='float32')
  with pytest.raises(
      ValueError, match=r'^config\.model\.dtype is set from config\.train\.compute_dtype; '
      r'config\.model\.remat is set from config\.train\.remat; set those instead$'):
    build_model(c)
  c = quickstart_config()
  c.model.unlock().depth = 3
  with pytest.raises(
      ValueError, match=r"config\.model has fields \['depth'\] that model 'unet' does not take; it "
      r"takes \[.*'base_channels'.*\]") as error:
    build_model(c)
  assert 'remat' not in str(error.value)


def tiny_cudnn_dit():
  c = dit_config('S', '2')  # attention_impl='cudnn', as in the DiT configs
  c.data.source, c.data.image_size, c.data.num_classes = 'digits', 8, 10
  c.model.depth, c.model.hidden_size, c.model.num_heads = 1, 32, 2
  assert c.model.attention_impl == 'cudnn'
  return validate_config(c)


def test_cudnn_fallback_on_cpu_is_one_info_line_per_process(caplog):
  assert jax.default_backend() == 'cpu'
  layers._warn_cudnn_fallback.cache_clear()  # pylint: disable=protected-access
  c = tiny_cudnn_dit()
  with caplog.at_level(logging.INFO):
    for dtype in ('bfloat16', 'float32'):  # two builds, two traces
      c.train.compute_dtype = dtype
      model = build_model(c)
      x, t, cond = dummy_inputs(c)
      jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **cond))  # pylint: disable=cell-var-from-loop
  notices = [r for r in caplog.records if 'attention_impl=cudnn' in r.getMessage()]
  assert len(notices) == 1 and notices[0].levelno == logging.INFO, [(r.levelname, r.getMessage()) for r in notices]
