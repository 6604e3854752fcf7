"""Text conditioning (tokens -> text tower -> cross-attention + pooled embedding) and image editing."""
import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training import sharding as sharding_lib
from jobs import train
from training import step as training_step
from configs.validate import validate_config
from diffusion import editing
from diffusion.samplers import ddim_sample, ddpm_sample
from diffusion.schedules import linear_alphas_cumprod, timestep_spacing
from input_pipeline import StepBatcher, create_source
from text.tokenizers import WordTokenizer, tokenizer_for
from models import build_model
from jobs.conditions import default_conditions, null_condition_for, null_tokens
from jobs.edit import make_edit_fn
from models.conditioning import condition_from_batch, drop_condition, dummy_condition
from text.tokenizers import empty_prompt_tokens
from jobs.sample import generate_samples, make_generate_fn
from tests.tiny import tiny_unet_config
from training.state import create_optimizer, create_state, state_shardings


def tiny_text_config(model='unet', **overrides):
  c = tiny_unet_config(**overrides)
  c.data.captions = True
  c.text.encoder = 'small'
  c.text.width, c.text.depth, c.text.num_heads = 16, 1, 2
  c.text.prompt_template = 'a handwritten digit {}'
  if model == 'dit':
    c.model = {'name': 'dit', 'patch_size': 4, 'depth': 2, 'hidden_size': 16, 'num_heads': 2, 'mlp_ratio': 2.0}
  return validate_config(c)


def init_params(config, batch=2):
  model = build_model(config)
  x, t = jnp.zeros((batch, 8, 8, 1)), jnp.zeros((batch,))
  return model, model.init(jax.random.PRNGKey(0), x, t, **dummy_condition(config, batch))['params']


def randomized(params, scale=0.3):
  """Every parameter redrawn, so zero-initialised output layers no longer hide the conditioning."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


# --- tokens and the conditioning contract -------------------------------------------------------------------


def test_word_tokenizer_layout():
  tok = WordTokenizer.from_texts(['a handwritten digit seven', 'the number 7, written by hand'])
  ids = tok.tokenize(['a handwritten digit seven', 'a purple seven', ''], context_length=8)
  assert ids.dtype == np.int32 and ids.shape == (3, 8)
  assert list(ids[0, :6]) == [tok.start_id, 2, 3, 4, 5, tok.end_id] and not ids[0, 6:].any()
  assert ids[1, 2] == tok.unk_id  # 'purple' is not in the vocabulary
  assert list(ids[2]) == [tok.start_id, tok.end_id] + [0] * 6
  assert tok.end_id == tok.vocab_size - 1 == ids.max()  # the pooled state sits at argmax(ids)
  assert tok.decode(ids[0]) == 'a handwritten digit seven'
  long = tok.tokenize(['seven ' * 20], context_length=8)[0]
  assert long[-1] == tok.end_id


def test_null_condition_is_the_empty_prompt():
  c = tiny_text_config()
  tok = tokenizer_for(c.data)
  empty = tok.tokenize([''], 77)[0]
  np.testing.assert_array_equal(empty_prompt_tokens(c.data), empty)
  cond = default_conditions(6, c)
  null = null_condition_for({'tokens': jnp.asarray(cond['tokens'])}, c)
  assert set(null) == {'tokens'}
  np.testing.assert_array_equal(null['tokens'], np.broadcast_to(empty, (6, 77)))
  assert dummy_condition(c, 3)['tokens'].shape == (3, 77)  # initialisation reads shapes only


def test_label_dropout_drops_the_prompt_to_the_empty_prompt():
  c = tiny_text_config()
  c.text.use_labels = True
  batch = create_source(c.data).get(np.arange(64))
  cond = condition_from_batch(batch, c)
  assert set(cond) == {'y', 'tokens'}
  empty = empty_prompt_tokens(c.data)
  null = null_condition_for(cond, c)
  all_dropped = drop_condition(jax.random.PRNGKey(0), cond, 1.0, null)
  np.testing.assert_array_equal(all_dropped['tokens'], np.broadcast_to(empty, (64, 77)))
  assert (all_dropped['y'] == 10).all()
  some = drop_condition(jax.random.PRNGKey(0), cond, 0.5, null)
  dropped = (np.asarray(some['tokens']) == empty).all(axis=1)
  assert 10 < dropped.sum() < 54  # about half
  np.testing.assert_array_equal(np.asarray(some['tokens'])[~dropped], batch['tokens'][~dropped])
  np.testing.assert_array_equal(np.asarray(some['y']) == 10, dropped)  # prompt and label go together
  assert drop_condition(jax.random.PRNGKey(0), cond, 0.0, null) is cond


def test_class_label_path_is_unchanged():
  c = tiny_unet_config()
  batch = create_source(c.data).get(np.arange(4))
  assert 'tokens' not in batch
  assert set(condition_from_batch(batch, c)) == {'y'}
  assert set(default_conditions(4, c)) == {'y'}
  params = jax.eval_shape(lambda: init_params(c)[1])
  assert 'text_encoder' not in params and 'label_emb' in params


def test_default_conditions_name_the_digit_and_survive_partial_batches():
  c = tiny_text_config()
  cond = default_conditions(12, c)
  assert cond['prompts'][7] == 'a handwritten digit seven' and cond['y'][7] == 7
  assert cond['tokens'].shape == (12, 77) and cond['tokens'].dtype == np.int32
  model, params = init_params(c)
  assert 'label_emb' not in params  # labels are for the evaluators, not the model
  c.mesh.num_devices = -1  # 10 samples in batches of 8 over 8 devices
  mesh = sharding_lib.create_mesh(c.mesh)
  images, out = generate_samples(c, make_generate_fn(c, model, mesh), params, mesh, 10, seed=0, batch_size=8)
  assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8
  assert list(out['prompts']) == list(cond['prompts'][:10]) and out['prompts'].dtype.kind == 'U'
  np.testing.assert_array_equal(out['y'], np.arange(10) % 10)


def test_config_validation_names_the_field():
  c = tiny_text_config()
  c.data.captions = False
  with pytest.raises(ValueError, match='data.captions=True'):
    validate_config(c)
  c = tiny_text_config()
  c.text.encoder = 'clip'
  with pytest.raises(ValueError, match="tokenizer='clip_bpe'"):
    validate_config(c)
  c = tiny_text_config()
  c.data.num_classes = 0
  with pytest.raises(ValueError, match='eval_prompts'):
    validate_config(c)
  c.text.eval_prompts = ('a handwritten digit one',)
  validate_config(c)
  c = tiny_unet_config()
  c.data.source, c.data.path, c.data.random_flip = 'latents', '/tmp/x', True
  with pytest.raises(ValueError, match='random_flip'):
    validate_config(c)
  c.data.random_flip = False
  with pytest.raises(ValueError, match=r'clip_denoised=True clips the predicted x0 to \[-1, 1\].*clip_denoised=False'):
    validate_config(c)


# --- the models ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('model_name', ['unet', 'dit'])
def test_cross_attention_changes_the_output_with_the_prompt(model_name):
  c = tiny_text_config(model_name)
  model, params = init_params(c)
  params = randomized(params)
  pooled = 'text_pooled_emb' if model_name == 'unet' else 'text_pooled_embedder'
  params[pooled] = jax.tree.map(jnp.zeros_like, params[pooled])  # only cross-attention sees the prompt now
  tok = tokenizer_for(c.data)
  seven, three = tok.tokenize(['a handwritten digit seven', 'a handwritten digit three'], 77)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 1))
  t = jnp.array([500.0, 500.0])
  out = lambda tokens: model.apply({'params': params}, x, t, tokens=jnp.asarray(tokens))
  a, b = out(np.stack([seven, seven])), out(np.stack([seven, three]))
  np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)  # examples do not mix
  assert float(jnp.abs(a[1] - b[1]).max()) > 1e-3
  padded = np.stack([seven, seven])
  padded[:, 40:] = 5  # after the end token: masked out
  np.testing.assert_allclose(out(padded), a, rtol=1e-5, atol=1e-6)
  # with the cross-attention outputs zeroed too, the prompt no longer matters
  zero_cross = lambda path, p: jnp.zeros_like(p) if any(getattr(k, 'key', None) == 'cross_attn' for k in path) else p
  blind = jax.tree_util.tree_map_with_path(zero_cross, params)
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), blind, params))
  out_blind = lambda tokens: model.apply({'params': blind}, x, t, tokens=jnp.asarray(tokens))
  np.testing.assert_allclose(out_blind(np.stack([seven, seven])), out_blind(np.stack([seven, three])), rtol=1e-5,
                             atol=1e-6)


def test_text_dit_train_step():
  c = tiny_text_config('dit')
  mesh = sharding_lib.create_mesh(c.mesh)
  model, tx = build_model(c), create_optimizer(c.optim)
  _, shardings = state_shardings(c, model, tx, mesh)
  state = create_state(c, model, tx, mesh)
  step_fn = training_step.make_train_step(c, model, tx, mesh, shardings, null_tokens=null_tokens(c))
  batch = StepBatcher(create_source(c.data), c.train.batch_size, c.seed).batch(0)
  assert batch['tokens'].shape == (c.train.batch_size, 77) and batch['tokens'].dtype == np.int32
  state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batch, mesh))
  assert np.isfinite(float(metrics['loss'])) and int(state.step) == 1


def test_text_unet_train_and_evaluate(tmp_path):
  c = tiny_text_config()
  c.train.num_steps = 3
  c.optim.warmup_steps = 0  # zero-initialised output layers: the tower gets gradients from the third step
  _, init = init_params(c)
  state = train.train_and_evaluate(c, str(tmp_path))
  assert int(state.step) == 3
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), init['text_encoder'],
                       jax.device_get(state.params['text_encoder']))
  assert any(jax.tree.leaves(moved))  # the small tower trains with the model


TINY_MERGES = ['h a', 'n d</w>', 'ha nd</w>', 'd i', 'g i', 'di gi', 's e', 'v e', 'se ve']


def test_pretrained_clip_tower_is_loaded_and_frozen(tmp_path):
  from models.clip_convert import save_converted
  from models.clip import CLIPTextConfig, CLIPTextTransformer
  vocab = tmp_path / 'bpe.txt.gz'
  with gzip.open(vocab, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + '\n'.join(TINY_MERGES) + '\n')
  tower = CLIPTextConfig(vocab_size=512 + len(TINY_MERGES) + 2, max_length=77, width=16, depth=1, num_heads=2,
                         mlp_dim=32)
  pretrained = CLIPTextTransformer(tower).init(jax.random.PRNGKey(7), jnp.zeros((1, 77), jnp.int32))['params']
  save_converted(str(tmp_path / 'clip_text.msgpack'), tower, pretrained)
  c = tiny_text_config()
  c.data.tokenizer, c.data.vocab_path = 'clip_bpe', str(vocab)
  c.text.encoder, c.text.clip_weights = 'clip', str(tmp_path / 'clip_text.msgpack')
  c.text.vocab_size = 0  # another tokenizer: validation reads its vocabulary anew
  c.optim.warmup_steps = 0
  validate_config(c)
  tokens = default_conditions(2, c)['tokens']
  assert tokens[0, 0] == tower.vocab_size - 2  # CLIP's start token, second to last id
  mesh = sharding_lib.create_mesh(c.mesh)
  from models.text_encoder import frozen_parameter_groups
  model, tx = build_model(c), create_optimizer(c.optim, frozen_parameter_groups(c))
  _, shardings = state_shardings(c, model, tx, mesh)
  state = create_state(c, model, tx, mesh)
  for a, b in zip(jax.tree.leaves(pretrained), jax.tree.leaves(jax.device_get(state.params['text_encoder']))):
    np.testing.assert_array_equal(a, b)
  params = jax.device_get(state.params)
  # frozen: the optimizer turns any gradient of the tower into a zero update (and keeps no state for it) ...
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates['text_encoder']))
  assert float(jnp.abs(updates['conv_in']['kernel']).max()) > 0
  # ... and the model stops gradients at its outputs
  params = randomized(params)
  x, t = jnp.ones((2, 8, 8, 1)), jnp.full((2,), 300.0)
  loss = lambda p: jnp.sum(model.apply({'params': p}, x, t, tokens=jnp.asarray(tokens))**2)
  g = jax.jit(jax.grad(loss))(params)
  assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(g['text_encoder']))
  assert float(jnp.abs(g['conv_in']['kernel']).max()) > 0


# --- img2img and inpainting ---------------------------------------------------------------------------------

AC = linear_alphas_cumprod(1000)


def toy_model(x, t):
  """Any smooth function of (x, t) will do for the properties below."""
  return jnp.tanh(x) * (t[:, None, None, None] / 1000.0)


def sample_config(sampler):
  c = tiny_unet_config().sample
  c.sampler, c.num_steps = sampler, 10
  return c


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm', 'dpm++2m'])
def test_img2img_at_strength_zero_returns_the_input(sampler):
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 1), minval=-1, maxval=1)
  out = editing.img2img(sample_config(sampler), 'eps', AC, toy_model, x0, jax.random.PRNGKey(1), strength=0.0)
  np.testing.assert_array_equal(out, x0)
  half = editing.img2img(sample_config(sampler), 'eps', AC, toy_model, x0, jax.random.PRNGKey(1), strength=0.5)
  assert half.shape == x0.shape and float(jnp.abs(half - x0).max()) > 1e-3
  assert list(editing.edit_timesteps(timestep_spacing(1000, 10), 0.3)) == [200, 100, 0]


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_inpainting_keeps_the_known_region_exactly(sampler):
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3), minval=-1, maxval=1)
  mask = np.zeros((2, 8, 8, 1), bool)
  mask[:, :, :4] = True  # left half known, broadcast over channels
  out = editing.inpaint(sample_config(sampler), 'eps', AC, toy_model, x0, mask, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(np.asarray(out)[:, :, :4], np.asarray(x0)[:, :, :4])
  assert float(jnp.abs(out[:, :, 4:] - x0[:, :, 4:]).max()) > 1e-2
  with pytest.raises(ValueError, match='inpainting supports'):
    editing.inpaint(sample_config('heun'), 'eps', AC, toy_model, x0, mask, jax.random.PRNGKey(3))


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_edit_loop_is_the_sampler_step_for_step(sampler):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  ts = timestep_spacing(1000, 10)
  rng = jax.random.PRNGKey(5)
  ours = editing.edit_loop(toy_model, x, AC, ts, sampler, 'eps', rng, eta=0.0)
  theirs = (ddim_sample(toy_model, x, AC, ts, 'eps', 0.0, rng) if sampler == 'ddim' else ddpm_sample(
      toy_model, x, AC, ts, 'eps', rng))
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_edit_fn_with_a_text_model_keeps_the_known_region():
  c = tiny_text_config()
  model, params = init_params(c)
  edit_fn = make_edit_fn(c, model)
  cond = {'tokens': jnp.asarray(default_conditions(2, c)['tokens'])}
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 1), minval=-1, maxval=1)
  mask = jnp.zeros((2, 8, 8, 1)).at[:, :4].set(1.0)
  out = edit_fn(params, cond, x0, jax.random.PRNGKey(1), jnp.float32(2.0), mask=mask)
  np.testing.assert_array_equal(np.asarray(out)[:, :4], np.asarray(x0)[:, :4])
  same = edit_fn(params, cond, x0, jax.random.PRNGKey(1), jnp.float32(2.0), strength=0.0)
  np.testing.assert_array_equal(same, x0)
