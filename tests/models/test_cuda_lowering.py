"""The GPU programs, checked without a GPU: the real train step and guided forward lowered for CUDA.

jax lowers a jitted function for another platform (`.trace(...).lower(lowering_platforms=('cuda',))`)
on this CPU machine; only jax's probe of the local cuDNN and GPU is replaced, by an H100 with cuDNN 9.10.
The lowered StableHLO names every fused attention kernel as a custom call, so these tests count them: each
attention layer of the network must become cuDNN's flash kernel, forward and backward, or the H100
benchmarks would quietly run XLA's attention.
"""
import collections
import logging
import re

import jax
import jax.numpy as jnp
import pytest

from training import sharding as sharding_lib
from training import step as training_step
from benchmarks.cuda_probe import pretend_h100_cudnn
from configs.validate import validate_config
from configs.dit import dit_config
from diffusion.guidance import classifier_free_guidance
from jobs.conditions import null_tokens
from models import build_model, layers
from models.conditioning import dummy_condition, null_condition
from tests.jobs.test_text_conditioning import tiny_text_config
from tests.tiny import tiny_unet_config
from training.state import create_optimizer, state_shardings

FORWARD, BACKWARD = '__cudnn$fmhaSoftmax', '__cudnn$fmhaSoftmaxBackward'


@pytest.fixture(autouse=True)
def pretend_h100_with_cudnn():
  with pretend_h100_cudnn():
    yield


def custom_calls(jitted, *args):
  text = jitted.trace(*args).lower(lowering_platforms=('cuda',)).as_text()
  return collections.Counter(re.findall(r'custom_call @([\w$]+)', text))


def tiny_dit(dtype='bfloat16', remat=False, remat_policy='full', **model):
  c = dit_config('S', 2)
  c.data.source, c.data.image_size, c.data.num_classes = 'digits', 8, 10
  c.model.depth, c.model.hidden_size, c.model.num_heads = 3, 144, 2  # head dim 72, as in XL
  c.model.update(model)
  c.train.batch_size, c.train.compute_dtype, c.train.remat, c.train.remat_policy = 8, dtype, remat, remat_policy
  return validate_config(c)


def lowered_train_step(c):
  model, tx = build_model(c), create_optimizer(c.optim)
  # one GPU, as in the H100 benchmarks; on a mesh of several, jax wraps the kernel in a CustomSPMDPartitioning
  # call that XLA's partitioner expands per device, so the kernel is not visible by name before compilation
  mesh = sharding_lib.create_mesh(c.mesh, jax.devices()[:1])
  abstract_state, shardings = state_shardings(c, model, tx, mesh)
  step = training_step.make_train_step(c, model, tx, mesh, shardings, null_tokens=null_tokens(c))
  b, size = c.train.batch_size, c.data.image_size
  batch = {
      'image': jax.ShapeDtypeStruct((b, size, size, c.data.channels), jnp.float16), 'label': jax.ShapeDtypeStruct(
          (b,), jnp.int32)
  }
  if c.data.captions:
    batch = {'image': batch['image'], 'tokens': jax.ShapeDtypeStruct((b, c.data.max_tokens), jnp.int32)}
  return custom_calls(step, abstract_state, batch)


@pytest.mark.parametrize('remat,policy', [(False, 'full'), (True, 'full'), (True, 'dots')])
def test_dit_train_step_runs_cudnn_flash_attention_forward_and_backward(remat, policy):
  calls = lowered_train_step(tiny_dit(remat=remat, remat_policy=policy))
  # remat recomputes each block's forward, attention included (the 'dots' policy keeps only dense outputs)
  assert calls[FORWARD] == (6 if remat else 3) and calls[BACKWARD] == 3, calls


def test_lightningdit_blocks_keep_cudnn_flash_attention():
  """RoPE and qk-norm act on q and k before the kernel (models/layers.MultiHeadSelfAttention)."""
  calls = lowered_train_step(tiny_dit(remat=True, mlp='swiglu', norm='rms', rope=True, qk_norm=True))
  assert calls[FORWARD] == 6 and calls[BACKWARD] == 3, calls


def test_guided_forward_runs_cudnn_flash_attention():
  c = tiny_dit()
  model = build_model(c)
  cond = dummy_condition(c, 4)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((4, 8, 8, 4)), jnp.zeros(
      (4,)), **cond)['params'])

  @jax.jit
  def guided(params, x, t):
    apply = lambda x, t, cond: model.apply({'params': params}, x, t, **cond)
    return classifier_free_guidance(apply, cond, null_condition(cond, c.data.num_classes), 1.5)(x, t)

  calls = custom_calls(guided, params, jax.ShapeDtypeStruct((4, 8, 8, 4), jnp.float32),
                       jax.ShapeDtypeStruct((4,), jnp.float32))
  assert calls[FORWARD] == 3 and calls[BACKWARD] == 0, calls  # one batched pass of 2x the images


def test_text_cross_attention_is_fused_with_its_padding():
  """Cross-attention to padded text tokens takes key lengths, which the flash kernel fuses (a boolean mask would
  not lower to it)."""
  c = tiny_text_config('dit')
  c.model.hidden_size, c.model.num_heads, c.model.attention_impl = 32, 2, 'cudnn'
  c.train.compute_dtype = 'bfloat16'
  calls = lowered_train_step(c)
  assert calls[FORWARD] == 2 * 2 and calls[BACKWARD] == 2 * 2, calls  # self + cross in each of 2 blocks


def test_unet_attention_with_head_dim_256_is_fused_on_hopper():
  c = tiny_unet_config()
  c.model.base_channels, c.model.num_heads, c.model.num_groups = 128, 1, 32  # 256 channels at 4x4, one head
  c.model.attention_impl, c.train.compute_dtype = 'cudnn', 'bfloat16'
  calls = lowered_train_step(validate_config(c))
  assert calls[FORWARD] >= 1 and calls[FORWARD] == calls[BACKWARD], calls


def test_float32_falls_back_to_xla_attention_with_a_warning(caplog):
  layers._warn_cudnn_fallback.cache_clear()  # each reason is logged once per process
  with caplog.at_level(logging.WARNING):
    calls = lowered_train_step(tiny_dit(dtype='float32'))
  assert calls[FORWARD] == 0 and calls[BACKWARD] == 0, calls
  assert any('attention_impl=cudnn' in r.getMessage() and 'float32' in r.getMessage() for r in caplog.records)
