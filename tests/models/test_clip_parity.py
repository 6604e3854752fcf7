"""Parity with Hugging Face transformers: a small random CLIPModel converted to Flax must give the same
embeddings, text hidden states and CLIP score; the image preprocessing must equal CLIPImageProcessorPil."""
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from models import clip_convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from evaluation.clip_score import clip_score_per_pair, preprocess_image  # pylint: disable=wrong-import-position
from models.clip import CLIPModel, CLIPTextTransformer  # pylint: disable=wrong-import-position

VOCAB, LENGTH, EOS = 99, 16, 98  # EOS is the largest id, as 49407 is in CLIP's vocabulary


def relative_error(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope='module')
def hf_model():
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=LENGTH, bos_token_id=97, eos_token_id=EOS,
                       pad_token_id=0),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=3), projection_dim=24)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():  # random init leaves norms at 1/0: perturb them so every tensor matters
    for name, p in model.named_parameters():
      if 'norm' in name or name.endswith('bias') or name.endswith('class_embedding'):
        p.add_(0.1 * torch.randn_like(p))
  return model


def inputs():
  rng = np.random.default_rng(1)
  pixels = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
  ids = np.zeros((4, LENGTH), np.int64)
  for row, length in enumerate([3, 7, 16, 10]):
    ids[row, :length] = [97] + list(rng.integers(1, 97, length - 2)) + [EOS]
  return pixels, ids


def test_embeddings_and_score_match_transformers(hf_model):
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  config = clip_convert.config_from_hf_json(hf_model.config.to_dict())
  params = clip_convert.convert_state_dict(state, config)
  pixels, ids = inputs()
  with torch.no_grad():
    t_pixels, t_ids = torch.from_numpy(pixels), torch.from_numpy(ids)
    ref_image = hf_model.get_image_features(pixel_values=t_pixels)
    ref_text = hf_model.get_text_features(input_ids=t_ids)
    ref_image = getattr(ref_image, 'pooler_output', ref_image).numpy()  # a tensor or, in newer versions, an output
    ref_text = getattr(ref_text, 'pooler_output', ref_text).numpy()
    ref_logits = hf_model(input_ids=t_ids, pixel_values=t_pixels).logits_per_image.numpy()
  model = CLIPModel(config)
  apply = jax.jit(lambda p, x, i: (model.apply({'params': p}, x, method=CLIPModel.get_image_features),
                                   model.apply({'params': p}, i, method=CLIPModel.get_text_features),
                                   model.apply({'params': p}, x, i)['logits_per_image']))
  image, text, logits = apply(params, jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(ids, jnp.int32))
  assert relative_error(image, ref_image) < 1e-4
  assert relative_error(text, ref_text) < 1e-4
  assert relative_error(logits, ref_logits) < 1e-4
  # torchmetrics' formula on the transformers embeddings vs ours.
  ref_score = 100 * torch.nn.functional.cosine_similarity(torch.from_numpy(ref_image), torch.from_numpy(ref_text))
  score = clip_score_per_pair(image, text)
  assert relative_error(score, ref_score.numpy()) < 1e-4
  assert abs(score.mean() - ref_score.mean().item()) < 1e-4 * abs(ref_score).max().item()


def test_text_tower_hidden_states_match_transformers(hf_model, tmp_path):
  text_model = transformers.CLIPTextModel(hf_model.config.text_config).eval()
  text_model.load_state_dict(
      {
          k.removeprefix('text_model.'): v
          for k, v in hf_model.state_dict().items()
          if k.startswith('text_model.') and not k.endswith('position_ids')
      }, strict=False)
  text_model.save_pretrained(tmp_path)  # transformers 5 writes keys without the `text_model.` prefix
  clip_convert.convert_file(str(tmp_path), str(tmp_path / 'text.msgpack'), text_only=True)
  config, params = clip_convert.load_converted(str(tmp_path / 'text.msgpack'))
  assert config.num_heads == 4  # from the config.json written beside the weights
  # Files on the Hub (e.g. Stable Diffusion's text_encoder/) carry the prefix; both convert alike.
  hub_layout = {'text_model.' + k: v.numpy() for k, v in text_model.state_dict().items()}
  jax.tree.map(np.testing.assert_array_equal, clip_convert.convert_text_state_dict(hub_layout, config), params)
  _, ids = inputs()
  ids[ids == 0] = EOS  # end-token padding, as Stable Diffusion's tokenizer pads
  with torch.no_grad():
    ref = text_model(input_ids=torch.from_numpy(ids))
  hidden, pooled = jax.jit(CLIPTextTransformer(config).apply)({'params': params}, jnp.asarray(ids, jnp.int32))
  assert relative_error(hidden, ref.last_hidden_state.numpy()) < 1e-4
  assert relative_error(pooled, ref.pooler_output.numpy()) < 1e-4


def test_preprocessing_matches_clip_image_processor():
  processor_cls = getattr(transformers, 'CLIPImageProcessorPil', None)
  if processor_cls is None:  # transformers < 5: the PIL processor is the default CLIPImageProcessor
    processor_cls = transformers.CLIPImageProcessor
  processor = processor_cls()
  rng = np.random.default_rng(2)
  for height, width in [(300, 257), (224, 224), (180, 500), (100, 150), (641, 480)]:
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ref = processor(images=image, return_tensors='np')['pixel_values'][0].transpose(1, 2, 0)
    ours = preprocess_image(image)
    assert ours.shape == ref.shape == (224, 224, 3)
    assert np.abs(ours - ref).max() < 1e-5


SENTENCES = [
    'a photo of a cat', "Hello,   World! It's 2024, café naïve 東京 ½ ² Ⅻ",
    'an astronaut riding a horse on the moon, 4k, trending on artstation',
    "A RED Sports-Car (1967) parked @ night; 'quoted' text... #hashtag :-) 🐱👍",
    "don't won't they're we've i'm you'll he'd", ' '.join(['word'] * 100)
]


def hf_tokenizer_ids(merges, texts, context_length):
  """transformers.CLIPTokenizer built from the same merges; its end-token padding turned into zeros."""
  from text.clip_bpe import build_vocab  # pylint: disable=g-import-not-at-top
  vocab = {token: i for i, token in enumerate(build_vocab(merges))}
  hf = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
  rows = hf(texts, padding='max_length', max_length=context_length, truncation=True)['input_ids']
  end = len(vocab) - 1
  return np.array([[t if t != end or i == row.index(end) else 0 for i, t in enumerate(row)] for row in rows])


def test_tokenizer_matches_transformers_on_a_tiny_vocabulary(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  from text.clip_bpe import CLIPTokenizer, read_bpe_merges  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'tiny.txt.gz'
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\nw o\nr d</w>\nwo rd</w>\nc a\nca t</w>\no f</w>\nt h\n')
  merges = read_bpe_merges(str(path))
  ours = CLIPTokenizer(merges).tokenize(SENTENCES, context_length=32)
  np.testing.assert_array_equal(ours, hf_tokenizer_ids(merges, SENTENCES, 32))


REAL_VOCAB = os.environ.get('CLIP_BPE_VOCAB', '/tmp/bpe_simple_vocab_16e6.txt.gz')


@pytest.mark.skipif(not os.path.isfile(REAL_VOCAB), reason='set CLIP_BPE_VOCAB to bpe_simple_vocab_16e6.txt.gz')
def test_tokenizer_matches_transformers_on_the_real_vocabulary():
  from text.clip_bpe import CLIPTokenizer, read_bpe_merges  # pylint: disable=g-import-not-at-top
  merges = read_bpe_merges(REAL_VOCAB)
  ours = CLIPTokenizer(merges).tokenize(SENTENCES)
  np.testing.assert_array_equal(ours, hf_tokenizer_ids(merges, SENTENCES, 77))
  assert ours[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
