"""The text tower of text-conditional DiT and U-Net models.

A text-conditional model takes cond = {'tokens': int32 [B, L]} (text/tokenizers.py) and runs
a CLIP text transformer (`models.clip.CLIPTextTransformer`, causal, pre-LN) on them inside its own
`__call__`, as the submodule 'text_encoder'. Its outputs condition the network twice:
- the token states [B, L, D] are the keys and values of cross-attention layers (U-Net: after the
  self-attention of each attention block; DiT: after the self-attention of each block), with the
  padding after the end token masked out (as key lengths, which cuDNN's fused attention takes);
- the pooled state (at the end token) is projected and added to the time embedding (U-Net) or to the
  adaLN conditioning vector (DiT).

config.text.encoder picks the tower:
- 'small': a small tower (config.text.width/depth/num_heads) over the tokenizer's vocabulary,
  randomly initialised and trained with the diffusion model. Works offline with either tokenizer.
- 'clip': a pretrained CLIP text tower converted with `python -m models.clip_convert --text_only`
  (or a full CLIP .msgpack, whose text tower is used), e.g. Stable Diffusion 1.x's ViT-L/14 text
  encoder; needs the 'clip_bpe' tokenizer. Its weights replace the random ones when a run starts, and
  it stays frozen (gradients stopped, no optimizer state) unless config.text.train_clip.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.clip import CLIPConfig, CLIPTextConfig, CLIPTextTransformer, eos_positions
from models.clip_convert import load_converted
from models.conditioning import uses_text

TEXT_ENCODER_NAME = 'text_encoder'  # the params subtree of the tower in every text-conditional model


@dataclasses.dataclass(frozen=True)
class TextEncoderSpec:
  tower: CLIPTextConfig
  frozen: bool = False


def encode_text(spec, tokens, dtype):
  """(token states [B, L, D], pooled [B, D], key lengths [B]: the tokens up to and including the end token);
  call inside a compact module."""
  hidden, pooled = CLIPTextTransformer(spec.tower, dtype, name=TEXT_ENCODER_NAME)(tokens)
  if spec.frozen:
    hidden, pooled = jax.lax.stop_gradient(hidden), jax.lax.stop_gradient(pooled)
  return hidden, pooled, (eos_positions(tokens) + 1).astype(jnp.int32)


@functools.lru_cache(maxsize=1)
def load_pretrained_tower(path):
  """(CLIPTextConfig, params of CLIPTextTransformer) from a converted .msgpack (text-only or full CLIP)."""
  tower, params = load_converted(path)
  if isinstance(tower, CLIPConfig):
    tower, params = tower.text, params['text_model']
  return tower, params


def text_encoder_spec(config):
  """The TextEncoderSpec of config.text, or None for models without text conditioning."""
  if not uses_text(config):
    return None
  text, vocab = config.text, config.text.vocab_size
  if not vocab:
    raise ValueError('config.text.vocab_size is 0: configs.validate.validate_config(config) sets it from the '
                     'tokenizer (config.data.tokenizer); validate the config before building the model')
  max_tokens = config.data.max_tokens
  if text.encoder == 'small':
    tower = CLIPTextConfig(vocab_size=vocab, max_length=max_tokens, width=text.width, depth=text.depth,
                           num_heads=text.num_heads, mlp_dim=int(text.mlp_ratio * text.width), hidden_act='gelu')
    return TextEncoderSpec(tower, frozen=False)
  if text.encoder == 'clip':
    if not text.clip_weights:
      raise ValueError("config.text.encoder='clip' needs config.text.clip_weights, a converted CLIP text tower: "
                       'python -m models.clip_convert --hf_weights=PATH --text_only --out=clip_text.msgpack')
    tower, _ = load_pretrained_tower(text.clip_weights)
    if tower.vocab_size != vocab:
      raise ValueError(f'{text.clip_weights} has a vocabulary of {tower.vocab_size} tokens but the tokenizer '
                       f'(config.data.tokenizer={config.data.tokenizer!r}) has {vocab}; use the CLIP BPE vocabulary')
    if max_tokens > tower.max_length:
      raise ValueError(f'config.data.max_tokens={max_tokens} exceeds the CLIP context of {tower.max_length}')
    return TextEncoderSpec(tower, frozen=not text.get('train_clip', False))
  raise ValueError(f"config.text.encoder={text.encoder!r} is not one of '', 'small', 'clip'")


def pretrained_text_params(config):
  """The pretrained tower's params for a fresh run ('clip'), or None (random init)."""
  if not uses_text(config) or config.text.encoder != 'clip':
    return None
  return load_pretrained_tower(config.text.clip_weights)[1]


def frozen_parameter_groups(config):
  """Top-level params subtrees the optimizer leaves unchanged."""
  spec = text_encoder_spec(config)
  return (TEXT_ENCODER_NAME,) if spec is not None and spec.frozen else ()


class PooledTextEmbedder(nn.Module):
  """Pooled text state [B, D] -> [B, features], a two-layer SiLU MLP (like the timestep embedder)."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled):
    h = nn.Dense(self.features, dtype=self.dtype, name='fc1')(pooled)
    return nn.Dense(self.features, dtype=self.dtype, name='fc2')(nn.silu(h))
