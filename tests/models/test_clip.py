"""CLIP without torch: tokenizer on a tiny vocabulary, the checkpoint converter, the model, the CLIP score."""
import dataclasses
import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation import clip_score
from models import clip_convert, weight_files
from evaluation.clip_score import (CLIP_MEAN, CLIP_STD, CLIPScorer, aggregate_clip_score, center_crop,
                                   clip_score_from_embeddings, clip_score_per_pair, image_embeddings, preprocess_image,
                                   resized_shape)
from text.clip_bpe import CLIPTokenizer, bytes_to_unicode, compile_split_pattern, read_bpe_merges
from models.clip import CLIP_CONFIGS, CLIPModel, CLIPTextTransformer

TINY = CLIP_CONFIGS['tiny']
TINY_MERGES = ['h e', 'l l', 'he ll', 'hell o</w>', 'c a', 'ca t</w>', 'p h', 'ph o', 'pho t', 'phot o</w>']


@pytest.fixture(scope='module')
def tiny_vocab_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('vocab') / 'tiny_bpe.txt.gz'
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + '\n'.join(TINY_MERGES) + '\n')
  return str(path)


@pytest.fixture(scope='module')
def tokenizer(tiny_vocab_path):
  return CLIPTokenizer.from_file(tiny_vocab_path)


# --- tokenizer --------------------------------------------------------------------------------------------


def test_vocab_layout(tokenizer):
  assert len(bytes_to_unicode()) == 256
  assert tokenizer.vocab_size == 512 + len(TINY_MERGES) + 2 == 524
  assert (tokenizer.start_id, tokenizer.end_id) == (522, 523)
  assert tokenizer.decoder[515] == 'hello</w>' and tokenizer.decoder[521] == 'photo</w>'
  assert tokenizer.encoder['a</w>'] == 256 + ord('a') - ord('!') == 320  # 'a' in the real vocabulary too


def test_encode_merges_and_falls_back_to_bytes(tokenizer):
  assert tokenizer.encode('hello') == [515]
  assert tokenizer.encode('  A   PHOTO of a CAT ') == [320, 521, 78, 325, 320, 517]  # 'of' = 'o', 'f</w>'
  assert tokenizer.encode('hello&amp;hello') == [515, 261, 515]  # html-unescaped '&</w>' is its own piece


def test_round_trips(tokenizer):
  for text in ['hello', 'a photo of a cat', 'café 東京 naïve', 'emoji 🐱 ok']:
    assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.decode(tokenizer.encode("it's 2024!")) == "it 's 2 0 2 4 !"  # every piece ends a word
  assert tokenizer.decode(tokenizer.encode('Hello,   WORLD')) == 'hello , world'


def test_tokenize_pads_and_truncates_keeping_the_end_token(tokenizer):
  ids = tokenizer.tokenize(['hello', 'a cat'], context_length=8)
  assert ids.dtype == np.int32 and ids.shape == (2, 8)
  np.testing.assert_array_equal(ids, [[522, 515, 523, 0, 0, 0, 0, 0], [522, 320, 517, 523, 0, 0, 0, 0]])
  long = tokenizer.tokenize('hello ' * 20, context_length=8)[0]
  np.testing.assert_array_equal(long, [522] + [515] * 6 + [523])
  assert tokenizer.tokenize('hello', context_length=5, pad_id=523)[0].tolist() == [522, 515, 523, 523, 523]
  assert tokenizer.decode(long) == ' '.join(['hello'] * 6)


def test_stdlib_pattern_matches_clip_pattern():
  text = "hello, world! it's 2024 café 東京 ½ ² ⅻ ١٢٣ a_b ﬁ 🐱 <|endoftext|>"
  expected = [
      'hello', ',', 'world', '!', 'it', "'s", '2', '0', '2', '4', 'café', '東京', '½', '²', 'ⅻ', '١', '٢', '٣', 'a', '_',
      'b', 'ﬁ', '🐱', '<|endoftext|>'
  ]
  assert compile_split_pattern(use_regex=False).findall(text) == expected
  pytest.importorskip('regex')
  assert compile_split_pattern(use_regex=True).findall(text) == expected


def test_missing_vocab_names_file_and_command(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=r'bpe_simple_vocab_16e6\.txt\.gz.*pip download --no-deps open_clip_torch'):
    read_bpe_merges(str(tmp_path / 'nope.txt.gz'))


REAL_VOCAB = os.environ.get('CLIP_BPE_VOCAB', '/tmp/bpe_simple_vocab_16e6.txt.gz')


@pytest.mark.skipif(not os.path.isfile(REAL_VOCAB), reason='set CLIP_BPE_VOCAB to bpe_simple_vocab_16e6.txt.gz')
def test_real_vocabulary():
  tok = CLIPTokenizer.from_file(REAL_VOCAB)
  assert tok.vocab_size == 49408 and (tok.start_id, tok.end_id) == (49406, 49407)
  assert tok.tokenize('a photo of a cat')[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
  text = 'an astronaut riding a horse on the moon, 4k'
  assert tok.encode(text) == [550, 18376, 6765, 320, 4558, 525, 518, 3293, 267, 275, 330]
  assert tok.decode(tok.encode(text)) == 'an astronaut riding a horse on the moon , 4 k'


# --- converter --------------------------------------------------------------------------------------------


def hf_tiny_state_dict(config=TINY, seed=0):
  """Random tensors under the real transformers.CLIPModel names and shapes, plus the position_ids buffers."""
  t, v = config.text, config.vision
  shapes = {
      'logit_scale': (),
      'text_model.embeddings.token_embedding.weight': (t.vocab_size, t.width),
      'text_model.embeddings.position_embedding.weight': (t.max_length, t.width),
      'text_model.final_layer_norm.weight': (t.width,),
      'text_model.final_layer_norm.bias': (t.width,),
      'vision_model.embeddings.class_embedding': (v.width,),
      'vision_model.embeddings.patch_embedding.weight': (v.width, 3, v.patch_size, v.patch_size),
      'vision_model.embeddings.position_embedding.weight': (v.num_patches + 1, v.width),
      'vision_model.pre_layrnorm.weight': (v.width,),
      'vision_model.pre_layrnorm.bias': (v.width,),
      'vision_model.post_layernorm.weight': (v.width,),
      'vision_model.post_layernorm.bias': (v.width,),
      'visual_projection.weight': (config.projection_dim, v.width),
      'text_projection.weight': (config.projection_dim, t.width),
  }
  for tower, c in (('text_model', t), ('vision_model', v)):
    for i in range(c.depth):
      p = f'{tower}.encoder.layers.{i}.'
      for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
        shapes[p + f'self_attn.{proj}.weight'], shapes[p + f'self_attn.{proj}.bias'] = (c.width, c.width), (c.width,)
      for norm in ('layer_norm1', 'layer_norm2'):
        shapes[p + f'{norm}.weight'], shapes[p + f'{norm}.bias'] = (c.width,), (c.width,)
      shapes[p + 'mlp.fc1.weight'], shapes[p + 'mlp.fc1.bias'] = (c.mlp_dim, c.width), (c.mlp_dim,)
      shapes[p + 'mlp.fc2.weight'], shapes[p + 'mlp.fc2.bias'] = (c.width, c.mlp_dim), (c.width,)
  rng = np.random.default_rng(seed)
  state = {k: np.asarray(0.1 * rng.normal(size=s) + k.endswith('norm1.weight'), np.float32) for k, s in shapes.items()}
  state['text_model.embeddings.position_ids'] = np.arange(t.max_length)[None]
  state['vision_model.embeddings.position_ids'] = np.arange(v.num_patches + 1)[None]
  return state


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


def test_converter_maps_every_tensor():
  state = hf_tiny_state_dict()
  params = clip_convert.convert_state_dict(state, TINY)
  assert len(_leaves(params)) == len(state) - 2 == 4 * 16 + 14 == 78  # 16 per layer, 2 + 2 layers
  shapes = {tuple(k.key for k in path): leaf.shape for path, leaf in _leaves(params)}
  assert shapes == clip_convert.clip_param_shapes(TINY)  # the exact tree CLIPModel(TINY).init makes
  t, v = params['text_model'], params['vision_model']
  np.testing.assert_array_equal(t['encoder']['layers_1']['self_attn']['q_proj']['kernel'],
                                state['text_model.encoder.layers.1.self_attn.q_proj.weight'].T)
  np.testing.assert_array_equal(v['embeddings']['patch_embedding']['kernel'][3, 5, 2, 7],
                                state['vision_model.embeddings.patch_embedding.weight'][7, 2, 3, 5])
  np.testing.assert_array_equal(t['final_layer_norm']['scale'], state['text_model.final_layer_norm.weight'])
  np.testing.assert_array_equal(params['visual_projection']['kernel'], state['visual_projection.weight'].T)
  assert float(params['logit_scale']) == float(state['logit_scale'])
  for path, leaf in _leaves(params):  # inverse mapping gives back the exact tensors
    flax_path = tuple(k.key for k in path)
    np.testing.assert_array_equal(clip_convert.to_hf_layout(flax_path, leaf), state[clip_convert.hf_name(flax_path)])


def test_converter_errors_name_the_key():
  state = hf_tiny_state_dict()
  del state['text_model.encoder.layers.1.mlp.fc2.bias']
  with pytest.raises(ValueError, match=r'missing keys: text_model\.encoder\.layers\.1\.mlp\.fc2\.bias$'):
    clip_convert.convert_state_dict(state, TINY)
  state = hf_tiny_state_dict()
  state['vision_model.encoder.layers.2.mlp.fc1.bias'] = np.zeros(37, np.float32)
  with pytest.raises(ValueError, match=r'unexpected keys: vision_model\.encoder\.layers\.2\.mlp\.fc1\.bias$'):
    clip_convert.convert_state_dict(state, TINY)
  state = hf_tiny_state_dict()
  state['visual_projection.weight'] = np.zeros((32, 24), np.float32)
  with pytest.raises(ValueError, match=r'misshaped keys: visual_projection\.weight \(32, 24\) \(expected \(24, 32\)\)'):
    clip_convert.convert_state_dict(state, TINY)


def test_config_inference_and_hf_json():
  assert clip_convert.infer_clip_config(hf_tiny_state_dict()) == TINY  # matched to the named config
  l14 = CLIP_CONFIGS['vit_l14']
  fake_l14 = {
      k:
          np.broadcast_to(np.float32(0), weight_files.torch_shape(p, s))  # shapes only, no memory
      for p, s in clip_convert.clip_param_shapes(l14).items() for k in [clip_convert.hf_name(p)]
  }
  assert clip_convert.infer_clip_config(fake_l14) == l14
  hf_json = {
      'projection_dim': 24, 'text_config': {
          'vocab_size': 99, 'max_position_embeddings': 16, 'hidden_size': 32, 'num_hidden_layers': 2,
          'num_attention_heads': 4, 'intermediate_size': 37
      }, 'vision_config': {
          'image_size': 32, 'patch_size': 16, 'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 4,
          'intermediate_size': 37
      }
  }
  config = clip_convert.config_from_hf_json(hf_json)
  assert dataclasses.replace(config, logit_scale_init=TINY.logit_scale_init) == TINY


def test_text_only_conversion():
  state = {k: v for k, v in hf_tiny_state_dict().items() if k.startswith('text_model.')}
  params = clip_convert.convert_text_state_dict(state, TINY.text)
  assert set(params) == {'embeddings', 'encoder', 'final_layer_norm'}
  ids = jnp.array([[5, 7, 98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
  hidden, pooled = jax.jit(CLIPTextTransformer(TINY.text).apply)({'params': params}, ids)
  assert hidden.shape == (1, 16, 32) and pooled.shape == (1, 32)
  # the hidden state at the end token (id 98, the argmax), up to the rounding of a LayerNorm XLA may recompute there
  np.testing.assert_array_max_ulp(pooled[0], hidden[0, 2], maxulp=4)


def test_files_end_to_end(tmp_path):
  import safetensors.numpy
  with pytest.raises(FileNotFoundError, match=r'model\.safetensors or pytorch_model\.bin.*clip-vit-large-patch14'):
    clip_convert.load_hf_state_dict(str(tmp_path))
  state = hf_tiny_state_dict()
  safetensors.numpy.save_file(state, str(tmp_path / 'model.safetensors'))
  with open(tmp_path / 'config.json', 'w') as f:  # heads come from here: shapes alone would say 1 head
    json.dump(
        {
            'projection_dim': 24, 'text_config': {
                'vocab_size': 99, 'max_position_embeddings': 16, 'hidden_size': 32, 'num_hidden_layers': 2,
                'num_attention_heads': 4, 'intermediate_size': 37
            }, 'vision_config': {
                'image_size': 32, 'patch_size': 16, 'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 4,
                'intermediate_size': 37
            }
        }, f)
  out = str(tmp_path / 'clip_tiny.msgpack')
  config = clip_convert.convert_file(str(tmp_path), out)
  assert config.vision.num_heads == 4 and config.text.num_heads == 4
  loaded_config, params = clip_convert.load_converted(out)
  assert loaded_config == config
  np.testing.assert_array_equal(params['text_projection']['kernel'], state['text_projection.weight'].T)
  named_out = str(tmp_path / 'clip_tiny_named.msgpack')
  assert clip_convert.convert_file(str(tmp_path / 'model.safetensors'), named_out, config_name='tiny') == TINY
  text_out = str(tmp_path / 'clip_tiny_text.msgpack')  # the text tower of a full checkpoint
  assert clip_convert.convert_file(str(tmp_path), text_out, text_only=True) == config.text
  text_config, text_params = clip_convert.load_converted(text_out)
  assert text_config == config.text and set(text_params) == {'embeddings', 'encoder', 'final_layer_norm'}
  with pytest.raises(FileNotFoundError, match='python -m models.clip_convert'):
    clip_convert.load_converted(str(tmp_path / 'missing.msgpack'))


# --- model ------------------------------------------------------------------------------------------------


def test_model_outputs_and_bf16():
  state = hf_tiny_state_dict(seed=1)
  state['logit_scale'] = np.array(np.log(1 / 0.07), np.float32)
  params = clip_convert.convert_state_dict(state, TINY)
  images = jax.random.normal(jax.random.PRNGKey(2), (3, 32, 32, 3))
  ids = jnp.array([[97, 5, 6, 98] + [0] * 12, [97, 98] + [0] * 14, [97] + list(range(10, 24)) + [98]])
  forward = jax.jit(CLIPModel(TINY).apply)
  out = forward({'params': params}, images, ids)
  assert out['image_embeds'].shape == (3, 24) and out['logits_per_image'].shape == (3, 3)
  np.testing.assert_allclose(np.linalg.norm(out['text_embeds'], axis=-1), 1, rtol=1e-6)
  cos = np.asarray(out['image_embeds'] @ out['text_embeds'].T)
  np.testing.assert_allclose(out['logits_per_image'], cos / 0.07, rtol=1e-5)
  # The end token sees only the tokens before it: what follows it changes nothing in the pooled output.
  other = forward({'params': params}, images, ids.at[0, 4:].set(3))
  np.testing.assert_allclose(other['text_embeds'][0], out['text_embeds'][0], rtol=1e-6)
  assert np.abs(other['text_embeds'][0] - out['text_embeds'][1]).max() > 0.01
  bf16 = jax.jit(CLIPModel(TINY, jnp.bfloat16).apply)({'params': params}, images, ids)
  assert bf16['image_embeds'].dtype == jnp.float32
  assert np.abs(np.asarray(bf16['image_embeds']) - np.asarray(out['image_embeds'])).max() < 0.03


# --- CLIP score -------------------------------------------------------------------------------------------


def test_clip_score_closed_form():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 8))
  assert clip_score_from_embeddings(a, 3 * a) == pytest.approx(100.0, abs=1e-10)
  e = np.eye(8)[:4]
  assert clip_score_from_embeddings(e, np.roll(e, 1, axis=1)) == 0.0
  assert clip_score_from_embeddings(a, -a) == 0.0  # mean -100, clipped
  half = np.array([[1.0, 0.0], [1.0, 0.0]])
  other = np.array([[1.0, 1.0], [-1.0, 0.0]])  # cosines 1/sqrt(2) and -1
  np.testing.assert_allclose(clip_score_per_pair(half, other), [100 / np.sqrt(2), -100])
  assert aggregate_clip_score([100 / np.sqrt(2), -100]) == 0.0  # torchmetrics clips the mean, not each pair
  assert aggregate_clip_score([60.0, -20.0]) == pytest.approx(20.0)


def test_preprocessing():
  assert resized_shape(480, 640, 224) == (224, 298) and resized_shape(640, 480, 224) == (298, 224)
  assert resized_shape(300, 300, 224) == (224, 224)
  image = np.arange(5 * 7).reshape(5, 7)
  np.testing.assert_array_equal(center_crop(image, 3), image[1:4, 2:5])
  flat = np.full((300, 400, 3), [10, 128, 250], np.uint8)
  pixels = preprocess_image(flat)
  expected = (np.array([10, 128, 250]) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
  assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
  np.testing.assert_allclose(pixels, np.broadcast_to(expected, pixels.shape), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(preprocess_image(flat[:, :, 0]), preprocess_image(np.repeat(flat[..., :1], 3, -1)))


def test_scorer_compiles_once_per_shape(tokenizer, monkeypatch):
  preprocessed = []  # the images preprocessed at a time: one device batch (4 rounded up to the 8 devices), not all
  monkeypatch.setattr(
      clip_score, 'preprocess_images',
      lambda images, size, f=clip_score.preprocess_images: preprocessed.append(len(images)) or f(images, size))
  config = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, vocab_size=tokenizer.vocab_size))
  params = clip_convert.convert_state_dict(hf_tiny_state_dict(config, seed=3), config)
  scorer = CLIPScorer(config, params, tokenizer, batch_size=4)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, size=(40 + 3 * i, 36, 3), dtype=np.uint8) for i in range(6)]
  texts = ['hello', 'a cat', 'a photo', 'hello cat', 'photo', 'a']
  image_embeddings.clear_cache()  # another test in this process may have compiled the same shapes
  before = image_embeddings._cache_size()
  per_pair = scorer.per_pair(images + images[:4], texts + texts[:4])[:6]
  assert preprocessed == [8, 2]
  scorer.per_pair(images[:3], texts[:3])
  assert image_embeddings._cache_size() == before + 1
  pixels = np.stack([preprocess_image(im, 32) for im in images])
  out = jax.jit(CLIPModel(config).apply)({'params': params}, pixels, tokenizer.tokenize(texts, 16))
  np.testing.assert_allclose(per_pair, 100 * np.sum(out['image_embeds'] * out['text_embeds'], -1), atol=1e-4)
  assert scorer(images, texts) == pytest.approx(max(per_pair.mean(), 0), abs=1e-12)
