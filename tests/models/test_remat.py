"""Rematerialisation (config.train.remat, train.remat_policy): the same gradients, less saved memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.remat_memory import model_loss, saved_activation_bytes
from configs.validate import validate_config
from configs.dit import dit_config
from tests.tiny import tiny_unet_config


def tiny_dit_config():
  c = dit_config('S', 2)
  c.data.source, c.data.image_size, c.data.num_classes = 'digits', 8, 10
  c.model.depth, c.model.hidden_size, c.model.num_heads = 3, 64, 4
  c.model.attention_impl = None
  c.train.compute_dtype = 'float32'  # the comparison is exact up to float32 rounding
  return c


@pytest.mark.parametrize('make_config', [tiny_dit_config, tiny_unet_config], ids=['dit', 'unet'])
def test_remat_policies_keep_the_gradients_and_save_less(make_config):
  grads, saved = {}, {}
  for remat, policy in ((False, 'full'), (True, 'full'), (True, 'dots')):
    c = make_config()
    c.train.remat, c.train.remat_policy = remat, policy
    loss, zeros = model_loss(validate_config(c), 4)
    # random parameters: the zero-initialised output layers would make most gradients zero
    leaves, tree = jax.tree.flatten(zeros)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    params = tree.unflatten([0.2 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    grads[remat, policy] = jax.jit(jax.grad(loss))(params)
    saved[remat, policy] = saved_activation_bytes(loss, params)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  want = flat(grads[False, 'full'])
  for setting in ((True, 'full'), (True, 'dots')):
    np.testing.assert_allclose(flat(grads[setting]), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
  # full keeps each block's input; dots also its dense outputs; no remat everything the backward needs
  assert saved[True, 'full'] < saved[True, 'dots'] < 0.6 * saved[False, 'full'], saved


def test_saved_activation_bytes_counts_the_residuals():
  x = jnp.ones((3, 5))
  # sin(sin(x)) keeps cos(x) and cos(sin(x)): 2 x 15 float32 values; the argument is not counted
  assert saved_activation_bytes(lambda x: jnp.sin(jnp.sin(x)).sum(), x) == 2 * 15 * 4
  assert saved_activation_bytes(lambda x: jnp.sin(jnp.sin(x.astype(jnp.bfloat16))).sum(), x) == 2 * 15 * 2
