"""CLIP (Radford et al., 2021) in Flax linen, laid out like Hugging Face `transformers.CLIPModel`.

Module and parameter names follow the Hugging Face checkpoint (`text_model.encoder.layers.0.self_attn.q_proj`
becomes `text_model/encoder/layers_0/self_attn/q_proj`), so `models/clip_convert.py` is a plain renaming.

- Vision tower: a ViT with a class token, patch conv without bias, `pre_layrnorm` before the encoder,
  `post_layernorm` on the class token, `visual_projection` without bias.
- Text tower: token + position embeddings, causal pre-LN transformer, `final_layer_norm`; the pooled output
  is the hidden state at the end-of-text token, found as the argmax of the token ids (the end token 49407 is
  the largest id of the original vocabulary, and padding comes after it), then `text_projection` without bias.
- Blocks: pre-LN, multi-head attention with biases, MLP with quick_gelu (x * sigmoid(1.702 x)).

Images are NHWC float arrays, already normalized with the CLIP mean and std (see `evaluation/clip_score.py`).
`dtype` sets the compute dtype (e.g. bfloat16); parameters stay float32, layer-norm statistics and the
attention softmax run in float32, and the feature methods return float32.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  vocab_size: int = 49408
  max_length: int = 77
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  mlp_dim: int = 2048
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5

  @property
  def num_patches(self):
    return (self.image_size // self.patch_size)**2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text: CLIPTextConfig = CLIPTextConfig()
  vision: CLIPVisionConfig = CLIPVisionConfig()
  projection_dim: int = 512
  logit_scale_init: float = math.log(1 / 0.07)


CLIP_CONFIGS = {
    # openai/clip-vit-base-patch32, about 151M parameters.
    'vit_b32':
        CLIPConfig(text=CLIPTextConfig(width=512, depth=12, num_heads=8, mlp_dim=2048),
                   vision=CLIPVisionConfig(patch_size=32, width=768, depth=12, num_heads=12,
                                           mlp_dim=3072), projection_dim=512),
    # openai/clip-vit-base-patch16.
    'vit_b16':
        CLIPConfig(text=CLIPTextConfig(width=512, depth=12, num_heads=8, mlp_dim=2048),
                   vision=CLIPVisionConfig(patch_size=16, width=768, depth=12, num_heads=12,
                                           mlp_dim=3072), projection_dim=512),
    # openai/clip-vit-large-patch14, about 428M parameters; the text tower is Stable Diffusion 1.x's encoder.
    'vit_l14':
        CLIPConfig(text=CLIPTextConfig(width=768, depth=12, num_heads=12, mlp_dim=3072),
                   vision=CLIPVisionConfig(patch_size=14, width=1024, depth=24, num_heads=16,
                                           mlp_dim=4096), projection_dim=768),
    # openai/clip-vit-large-patch14-336.
    'vit_l14_336':
        CLIPConfig(
            text=CLIPTextConfig(width=768, depth=12, num_heads=12, mlp_dim=3072),
            vision=CLIPVisionConfig(image_size=336, patch_size=14, width=1024, depth=24, num_heads=16,
                                    mlp_dim=4096), projection_dim=768),
    # For tests: a 32x32 image in 4 patches, a 99-token vocabulary, 16 positions.
    'tiny':
        CLIPConfig(text=CLIPTextConfig(vocab_size=99, max_length=16, width=32, depth=2, num_heads=4, mlp_dim=37),
                   vision=CLIPVisionConfig(image_size=32, patch_size=16, width=32, depth=2, num_heads=4,
                                           mlp_dim=37), projection_dim=24),
}


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    'quick_gelu': quick_gelu,
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # torch's default (erf) GELU
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
}


def _activation(name):
  if name not in ACTIVATIONS:
    raise KeyError(f'unknown activation {name!r}; known: {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def eos_positions(input_ids):
  """Index of the end-of-text token in each row: the first argmax of the ids (as Hugging Face does)."""
  return jnp.argmax(input_ids, axis=-1)


class CLIPAttention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections; softmax in float32."""
  num_heads: int
  causal: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'width {width} is not divisible by num_heads {self.num_heads}')
    head_dim = width // self.num_heads

    def heads(name):
      y = nn.Dense(width, dtype=self.dtype, name=name)(x)
      return y.reshape(*y.shape[:-1], self.num_heads, head_dim)

    q, k, v = heads('q_proj'), heads('k_proj'), heads('v_proj')
    y = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal)
    return nn.Dense(width, dtype=self.dtype, name='out_proj')(y.reshape(x.shape))


class CLIPMLP(nn.Module):
  mlp_dim: int
  hidden_act: str = 'quick_gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _activation(self.hidden_act)(nn.Dense(self.mlp_dim, dtype=self.dtype, name='fc1')(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name='fc2')(h)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  num_heads: int
  mlp_dim: int
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  causal: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
    x = x + CLIPAttention(self.num_heads, self.causal, self.dtype, name='self_attn')(norm('layer_norm1')(x), mask)
    return x + CLIPMLP(self.mlp_dim, self.hidden_act, self.dtype, name='mlp')(norm('layer_norm2')(x))


class CLIPEncoder(nn.Module):
  """A stack of `depth` encoder layers named layers_0 ... layers_{depth-1}."""
  depth: int
  num_heads: int
  mlp_dim: int
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  causal: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.depth):
      x = CLIPEncoderLayer(self.num_heads, self.mlp_dim, self.hidden_act, self.layer_norm_eps, self.causal, self.dtype,
                           name=f'layers_{i}')(x, mask)
    return x


def _encoder(config, causal, dtype):
  return CLIPEncoder(config.depth, config.num_heads, config.mlp_dim, config.hidden_act, config.layer_norm_eps, causal,
                     dtype, name='encoder')


_EMBED_INIT = nn.initializers.normal(0.02)


class CLIPTextEmbeddings(nn.Module):
  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    c = self.config
    length = input_ids.shape[-1]
    if length > c.max_length:
      raise ValueError(f'sequence of {length} tokens is longer than max_length {c.max_length}')
    tokens = nn.Embed(c.vocab_size, c.width, embedding_init=_EMBED_INIT, dtype=self.dtype,
                      name='token_embedding')(input_ids)
    positions = nn.Embed(c.max_length, c.width, embedding_init=_EMBED_INIT, dtype=self.dtype,
                         name='position_embedding')(jnp.arange(length))
    return tokens + positions


class CLIPTextTransformer(nn.Module):
  """The text tower alone: token ids [B, L] -> (last_hidden_state [B, L, D], pooled [B, D]).

  `last_hidden_state` is after `final_layer_norm`: the sequence a diffusion model cross-attends to (Stable
  Diffusion 1.x uses exactly this from ViT-L/14). `pooled` is that sequence at the end-of-text token.
  `attention_mask` [B, L] (1 = token, 0 = padding) is optional; with the causal mask it only changes the
  hidden states after the end token, never `pooled`.
  """
  config: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    c = self.config
    x = CLIPTextEmbeddings(c, self.dtype, name='embeddings')(input_ids)
    mask = None if attention_mask is None else attention_mask[:, None, None, :].astype(bool)
    x = _encoder(c, causal=True, dtype=self.dtype)(x, mask)
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name='final_layer_norm')(x)
    pooled = jnp.take_along_axis(x, eos_positions(input_ids)[:, None, None], axis=1)[:, 0]
    return x, pooled


class CLIPVisionEmbeddings(nn.Module):
  config: CLIPVisionConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    c = self.config
    if pixel_values.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f'expected NHWC images of shape [B, {c.image_size}, {c.image_size}, 3], '
                       f'got {pixel_values.shape}')
    patches = nn.Conv(c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size), padding='VALID',
                      use_bias=False, dtype=self.dtype, name='patch_embedding')(pixel_values)
    patches = patches.reshape(patches.shape[0], -1, c.width)
    class_embedding = self.param('class_embedding', nn.initializers.normal(c.width**-0.5), (c.width,))
    class_tokens = jnp.broadcast_to(class_embedding.astype(patches.dtype), (patches.shape[0], 1, c.width))
    x = jnp.concatenate([class_tokens, patches], axis=1)
    positions = nn.Embed(c.num_patches + 1, c.width, embedding_init=_EMBED_INIT, dtype=self.dtype,
                         name='position_embedding')(jnp.arange(c.num_patches + 1))
    return x + positions


class CLIPVisionTransformer(nn.Module):
  """The vision tower: NHWC images -> (last_hidden_state [B, 1 + patches, D], pooled [B, D]).

  `pooled` is `post_layernorm` of the class token; `last_hidden_state` is the encoder output without it.
  """
  config: CLIPVisionConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    c = self.config
    x = CLIPVisionEmbeddings(c, self.dtype, name='embeddings')(pixel_values.astype(self.dtype))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name='pre_layrnorm')(x)
    x = _encoder(c, causal=False, dtype=self.dtype)(x)
    pooled = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name='post_layernorm')(x[:, 0])
    return x, pooled


def l2_normalize(x, eps=1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class CLIPModel(nn.Module):
  """Both towers, their projections and the logit scale.

  `get_image_features` / `get_text_features` return the projected (unnormalized) float32 embeddings, as in
  Hugging Face; `__call__` returns normalized embeddings and `logits_per_image` = exp(logit_scale) * cos.
  Call a method with `model.apply(params, x, method=CLIPModel.get_image_features)`.
  """
  config: CLIPConfig
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    c = self.config
    self.text_model = CLIPTextTransformer(c.text, self.dtype)
    self.vision_model = CLIPVisionTransformer(c.vision, self.dtype)
    self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
    self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
    self.logit_scale = self.param('logit_scale', nn.initializers.constant(c.logit_scale_init), ())

  def get_image_features(self, pixel_values):
    _, pooled = self.vision_model(pixel_values)
    return self.visual_projection(pooled).astype(jnp.float32)

  def get_text_features(self, input_ids, attention_mask=None):
    _, pooled = self.text_model(input_ids, attention_mask)
    return self.text_projection(pooled).astype(jnp.float32)

  def __call__(self, pixel_values, input_ids, attention_mask=None):
    image_embeds = l2_normalize(self.get_image_features(pixel_values))
    text_embeds = l2_normalize(self.get_text_features(input_ids, attention_mask))
    logits_per_image = jnp.exp(self.logit_scale) * image_embeds @ text_embeds.T
    return {'image_embeds': image_embeds, 'text_embeds': text_embeds, 'logits_per_image': logits_per_image}


def init_clip_params(config, rng=None):
  """Randomly initialized float32 parameters of a CLIPModel (shape check, tests)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  images = jnp.zeros((1, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
  ids = jnp.zeros((1, config.text.max_length), jnp.int32)
  return CLIPModel(config).init(rng, images, ids)['params']
