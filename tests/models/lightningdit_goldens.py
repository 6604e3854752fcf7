"""Inputs and weights of tests/models/test_lightningdit.py, and the script that ran LightningDiT's code on them.

    python tests/models/lightningdit_goldens.py /path/to/LightningDiT

runs LightningDiT's own modules (github.com/hustvl/LightningDiT: models/lightningdit.py, rmsnorm.py, swiglu_ffn.py,
pos_embed.py; needs torch, timm and einops, CPU is enough) on `case_inputs` with `reference_weight` for every
trainable parameter, and prints the GOLDENS of the test. torch.compile is switched off: the same math, eagerly.
"""
import importlib.util
import sys
import types
import zlib

import numpy as np

HIDDEN, HEADS, GRID, BATCH = 64, 4, 4, 2
TOKENS, HEAD_DIM = GRID * GRID, HIDDEN // HEADS
# LightningDiT(...) arguments of the whole tiny model: an 8x8x4 input in 2x2 patches (a 4x4 grid), every option on.
TINY_MODEL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=HIDDEN, depth=2, num_heads=HEADS,
                  num_classes=10, learn_sigma=False, use_qknorm=True, use_swiglu=True, use_rope=True, use_rmsnorm=True)
CASES = ('rope', 'rope_xl', 'rmsnorm', 'swiglu', 'attention', 'block', 'model')


def _normal(name, shape, scale=1.0):
  return (scale * np.random.default_rng(zlib.crc32(name.encode())).standard_normal(shape)).astype(np.float32)


def case_inputs(case):
  """{argument: float32 numpy array} of a case, torch layouts (heads before tokens, NCHW)."""
  tokens = lambda: _normal(case + '.x', (BATCH, TOKENS, HIDDEN))
  if case == 'rope':
    return {'x': _normal('rope.x', (BATCH, HEADS, TOKENS, HEAD_DIM))}
  if case == 'rope_xl':  # LightningDiT-XL/1 at 256x256: head dim 72 on a 16x16 grid of VA-VAE latents
    return {'x': _normal('rope_xl.x', (1, 1, 256, 72))}
  if case == 'block':
    return {'x': tokens(), 'c': _normal('block.c', (BATCH, HIDDEN))}
  if case == 'model':
    # small timesteps: XLA and torch round a few of the timestep frequencies (an exp) 1 ulp apart, which t = 700
    # would turn into differences of 3e-5 in the features
    return {'x': _normal('model.x', (BATCH, 4, 8, 8)), 't': np.array([0.25, 7.5], np.float32),
            'y': np.array([3, 10])}  # 10: the null label
  return {'x': tokens()}


def reference_weight(key, shape):
  """The value of parameter `key` ('<case>.<torch name>'): 0.2 N(0, 1) seeded by the key, plus 1 for norm weights."""
  *modules, leaf = key.split('.')
  return _normal(key, shape, 0.2) + (1.0 if leaf == 'weight' and 'norm' in modules[-1] else 0.0)


def _reference_modules():
  """case -> LightningDiT's module for it, with reference weights, in eval mode."""
  import torch  # pylint: disable=import-outside-toplevel
  from models.lightningdit import Attention, LightningDiT, LightningDiTBlock
  from models.pos_embed import VisionRotaryEmbeddingFast
  from models.rmsnorm import RMSNorm
  from models.swiglu_ffn import SwiGLUFFN
  modules = {
      'rope': VisionRotaryEmbeddingFast(HEAD_DIM // 2, pt_seq_len=GRID),
      'rope_xl': VisionRotaryEmbeddingFast(72 // 2, pt_seq_len=16),
      'rmsnorm': RMSNorm(HIDDEN),
      'swiglu': SwiGLUFFN(HIDDEN, int(2 / 3 * 4 * HIDDEN)),
      'attention': Attention(HIDDEN, HEADS, qkv_bias=True, qk_norm=True),  # qk-norm: torch LayerNorm
      'block': LightningDiTBlock(HIDDEN, HEADS, use_qknorm=True, use_swiglu=True, use_rmsnorm=True),
      'model': LightningDiT(**TINY_MODEL),
  }
  with torch.no_grad():
    for case, module in modules.items():
      for name, param in module.named_parameters():
        if param.requires_grad:  # not the model's fixed pos_embed
          param.copy_(torch.from_numpy(reference_weight(f'{case}.{name}', tuple(param.shape))))
      module.eval()
  return modules


def reference_outputs():
  """case -> LightningDiT's output (numpy, torch layout)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch._dynamo.config.disable = True  # pylint: disable=protected-access
  modules = _reference_modules()
  rope = modules['rope']
  outputs = {}
  with torch.no_grad():
    for case, module in modules.items():
      args = {k: torch.from_numpy(v) for k, v in case_inputs(case).items()}
      if case == 'attention':
        args['rope'] = rope
      elif case == 'block':
        args['feat_rope'] = rope
      outputs[case] = module(*args.values()).numpy()
  return outputs


def summary(out):
  """What the test records of an output: its sum, sum of squares and 8 evenly spaced entries (flat order)."""
  flat = np.asarray(out, np.float64).ravel()
  picks = flat[np.linspace(0, flat.size - 1, 8).astype(int)]
  return [round(float(flat.sum()), 5), round(float((flat**2).sum()), 5)] + [round(float(v), 6) for v in picks]


def _stub_fairscale():
  """rmsnorm.py imports fairscale for its Llama classes, which the reference never builds."""
  if importlib.util.find_spec('fairscale') is None:
    for name in ('fairscale', 'fairscale.nn', 'fairscale.nn.model_parallel', 'fairscale.nn.model_parallel.initialize',
                 'fairscale.nn.model_parallel.layers'):
      sys.modules[name] = types.ModuleType(name)
    layers = sys.modules['fairscale.nn.model_parallel.layers']
    layers.ColumnParallelLinear = layers.ParallelEmbedding = layers.RowParallelLinear = None


if __name__ == '__main__':
  sys.path.insert(0, sys.argv[1])
  _stub_fairscale()
  for case, out in reference_outputs().items():
    print(f'    {case!r}: ({tuple(out.shape)}, {summary(out)}),')
