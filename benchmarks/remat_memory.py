"""Activation memory a train step keeps for its backward pass, by remat setting: no device needed.

  python -m benchmarks.remat_memory --model=dit_xl --batch=256

jax traces the model's loss and reports the residuals its backward pass saves (what
`jax.ad_checkpoint.print_saved_residuals` lists, parameters excluded); their total is the activation
memory of a step before XLA's fusion, for no remat, `--config.train.remat=true` with
`train.remat_policy=full` (each block keeps its input) and `=dots` (it also keeps its dense layers'
outputs). Nothing runs on a device, so it answers "does XL/2 at batch 256 fit" on a laptop. cuDNN's
flash attention (the default, traced as an H100 runs it, benchmarks/cuda_probe.py) keeps only its output
and log-sum-exp for the backward; XLA's (`--attention=xla`) keeps its [B, heads, tokens, tokens]
probabilities as well.
"""
import contextlib
import io
import re

from absl import app, flags

from benchmarks.benchmark_config import benchmark_config
from benchmarks.cuda_probe import pretend_h100_cudnn
from models import build_model
from models.shapes import abstract_params, dummy_inputs

flags.DEFINE_enum('model', 'dit_xl', ['dit_s', 'dit_b', 'dit_l', 'dit_xl', 'unet'], 'Model config.')
flags.DEFINE_integer('patch', 2, 'DiT patch size.')
flags.DEFINE_integer('batch', 256, 'Global batch size.')
flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'], 'Compute dtype.')
flags.DEFINE_enum(
    'attention', 'cudnn', ['cudnn', 'xla'], 'Attention implementation; cudnn is traced as an H100 '
    'would run it, GPU or not (benchmarks/cuda_probe.py).')
FLAGS = flags.FLAGS

_BYTES = {'bf16': 2, 'f16': 2, 'f32': 4, 'f64': 8, 'i8': 1, 'u8': 1, 'i32': 4, 'u32': 4, 'i64': 8, 'bool': 1}


def saved_activation_bytes(loss_fn, *args):
  """Bytes of the residuals jax saves for the backward pass of loss_fn(*args), its arguments excluded."""
  from jax.ad_checkpoint import print_saved_residuals
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    print_saved_residuals(loss_fn, *args)
  total = 0
  for line in text.getvalue().splitlines():
    if 'from the argument' in line:
      continue
    dtype, dims = re.match(r'(\w+)\[([\d,]*)\]', line).groups()
    size = 1
    for d in filter(None, dims.split(',')):
      size *= int(d)
    total += _BYTES[dtype] * size
  return total


def model_loss(config, batch_size):
  """(loss of params, zero params of the model's shapes): a sum of squares of the output on zero inputs."""
  import jax
  import jax.numpy as jnp
  model = build_model(config)
  x, t, cond = dummy_inputs(config, batch_size)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_params(config, model))
  return lambda p: jnp.sum(model.apply({'params': p}, x, t, **cond)**2), params


def main(_):
  print(f'saved activations of one train step, {FLAGS.model} batch {FLAGS.batch} {FLAGS.dtype} '
        f'{FLAGS.attention} attention (jax residuals, before XLA fusion):')
  for remat, policy in ((False, 'full'), (True, 'full'), (True, 'dots')):
    config = benchmark_config(FLAGS.model, FLAGS.patch, FLAGS.batch, FLAGS.dtype, FLAGS.attention, remat, policy)
    with pretend_h100_cudnn():
      loss, params = model_loss(config, FLAGS.batch)
      saved = saved_activation_bytes(loss, params)
    setting = f'remat_policy={policy}' if remat else 'no remat'
    print(f'  {setting:<20} {saved / 2**30:8.2f} GiB', flush=True)


if __name__ == '__main__':
  app.run(main)
