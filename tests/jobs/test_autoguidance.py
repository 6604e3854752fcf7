"""Autoguidance (jobs/guided.py): D = D_weak(c) + w (D(c) - D_weak(c)); with classifier-free guidance at scale s,
D(null) + s (D(c) - D(null)) + (w - 1) (D(c) - D_weak(c)); the guide loaded from a second workdir."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import base_config
from configs.validate import validate_config
from diffusion import editing
from diffusion.objectives import edm_denoiser
from diffusion.samplers import run_sampler
from diffusion.schedules import alphas_cumprod_for
from input_pipeline.images import to_uint8
from jobs.edit import make_edit_fn
from jobs.guided import GuidingModel, guided_model, load_guide
from jobs.restore import restore_for_inference, write_config
from jobs.sample import generate_samples, initial_noise, make_generate_fn
from models import build_model
from models.shapes import dummy_inputs
from training.checkpoints import CheckpointStore, model_signature
from tests.tiny import tiny_unet_config

X = jnp.linspace(-1.0, 1.0, 3 * 2 * 2 * 2).reshape(3, 2, 2, 2)
T = jnp.array([100.0, 500.0, 900.0])
Y = jnp.array([1, 4, 7])
MAIN, WEAK = {'a': 0.9, 'b': 0.05, 'v': 0.3}, {'a': 0.6, 'b': 0.02, 'v': -0.7}


class Affine:
  """Stands in for a flax module: a x + b (y + 1) + t / 1000 (y = 10: the null label; no y: 0), followed by
  variance values v x with learned_variance."""
  def __init__(self, learned_variance=False):
    self.learned_variance = learned_variance

  def apply(self, variables, x, t, y=None):
    p = variables['params']
    label = 0.0 if y is None else (y + 1.0)[:, None, None, None]
    out = p['a'] * x + p['b'] * label + t[:, None, None, None] / 1000
    return jnp.concatenate([out, p['v'] * x], -1) if self.learned_variance else out


def toy_config(num_classes=10, **sample):
  c = base_config()
  c.data.image_size, c.data.channels, c.data.num_classes = 2, 2, num_classes
  c.sample.update(sample)
  return c


def guided(config, cond, scale, w, guide_learn_sigma=False, guide_inputs=('y',)):
  """The guided model_fn's output at (X, T), both scales traced."""
  guide = GuidingModel(Affine(guide_learn_sigma), WEAK, guide_inputs, guide_learn_sigma)
  main = Affine(config.diffusion.learn_sigma)
  fn = lambda s, w: guided_model(config, main, MAIN, cond, s, guide=guide, guide_inputs=(WEAK, w)).model_fn(X, T)
  return np.asarray(jax.jit(fn)(jnp.float32(scale), jnp.float32(w)))


def outputs(y=Y):
  """This model's conditional and null outputs and the weak model's conditional one, by hand."""
  c = Affine().apply({'params': MAIN}, X, T, y)
  u = Affine().apply({'params': MAIN}, X, T, None if y is None else jnp.full_like(y, 10))
  return np.asarray(c), np.asarray(u), np.asarray(Affine().apply({'params': WEAK}, X, T, y))


@pytest.mark.parametrize('conditional', [True, False])
def test_without_cfg_the_output_is_the_weak_one_plus_w_times_the_difference(conditional):
  config, cond = (toy_config(), {'y': Y}) if conditional else (toy_config(num_classes=0), {})
  c, _, b = outputs(Y if conditional else None)
  np.testing.assert_allclose(guided(config, cond, 1.0, 2.5, guide_inputs=tuple(cond)), b + 2.5 * (c - b), rtol=1e-6,
                             atol=1e-6)
  alone = jax.jit(lambda s: guided_model(config, Affine(), MAIN, cond, s).model_fn(X, T))(jnp.float32(1.0))
  np.testing.assert_array_equal(guided(config, cond, 1.0, 1.0, guide_inputs=tuple(cond)), alone)  # w = 1: this model


def test_with_cfg_both_differences_add_up():
  c, u, b = outputs()
  np.testing.assert_allclose(guided(toy_config(), {'y': Y}, 3.0, 2.0), u + 3.0 * (c - u) + (c - b), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(guided(toy_config(), {'y': Y}, 3.0, 1.0), u + 3.0 * (c - u), rtol=1e-6, atol=1e-6)


def test_an_unconditional_guide_reads_no_labels():
  c, _, _ = outputs()
  b = np.asarray(Affine().apply({'params': WEAK}, X, T))
  np.testing.assert_allclose(guided(toy_config(), {'y': Y}, 1.0, 2.0, guide_inputs=()), b + 2.0 * (c - b), rtol=1e-6,
                             atol=1e-6)


def test_outside_the_guidance_interval_both_guidances_are_off():
  c, u, b = outputs()
  out = guided(toy_config(guidance_interval=(200.0, 800.0)), {'y': Y}, 3.0, 2.0)
  np.testing.assert_allclose(out[[0, 2]], c[[0, 2]], rtol=1e-6, atol=1e-6)  # t = 100, 900
  np.testing.assert_allclose(out[1], (u + 3.0 * (c - u) + (c - b))[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('guide_learn_sigma', [False, True])
def test_learned_variances_stay_the_main_models(guide_learn_sigma):
  config = toy_config()
  config.diffusion.learn_sigma = True
  c, _, b = outputs()
  out = guided(config, {'y': Y}, 1.0, 3.0, guide_learn_sigma)
  np.testing.assert_allclose(out[..., :2], b + 3.0 * (c - b), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out[..., 2:], MAIN['v'] * np.asarray(X))  # the conditional variance, unguided


def test_with_edm_preconditioning_the_denoisers_combine():
  config = toy_config()
  config.diffusion.preconditioning, config.diffusion.objective = 'edm', 'x0'
  ac = alphas_cumprod_for(config)
  denoiser = lambda p, y: np.asarray(
      edm_denoiser(lambda x, t: Affine().apply({'params': p}, x, t, y), ac, config.diffusion.sigma_data)(X, T))
  d_c, d_u, d_b = denoiser(MAIN, Y), denoiser(MAIN, jnp.full_like(Y, 10)), denoiser(WEAK, Y)
  np.testing.assert_allclose(guided(config, {'y': Y}, 1.0, 2.0), d_b + 2.0 * (d_c - d_b), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(guided(config, {'y': Y}, 1.5, 2.0), d_u + 1.5 * (d_c - d_u) + (d_c - d_b), rtol=1e-5,
                             atol=1e-5)


def test_editing_is_autoguided_as_sampling_is():
  config = toy_config(num_steps=4)
  guide = GuidingModel(Affine(), WEAK, ('y',), False)
  rng = jax.random.PRNGKey(0)
  ours = make_edit_fn(config, Affine(), guide=guide)(MAIN, {'y': Y}, X, rng, jnp.float32(1.0), strength=0.5)

  @jax.jit
  def by_hand(w):
    def model_fn(x, t):
      c, b = Affine().apply({'params': MAIN}, x, t, Y), Affine().apply({'params': WEAK}, x, t, Y)
      return b + w * (c - b)

    return editing.edit(config.sample, 'eps', alphas_cumprod_for(config), model_fn, X, rng, 0.5)

  np.testing.assert_allclose(ours, by_hand(2.0), rtol=1e-5, atol=1e-5)  # config.sample.autoguidance_scale
  assert np.abs(np.asarray(ours) - np.asarray(by_hand(1.0))).max() > 1e-3


# ----------------------------------------------------------------------------------------------
# The guide of a second workdir


def write_workdir(workdir, config, seeds_by_step):
  """config.json and one checkpoint per step, its params and EMA drawn with that step's seed: kernels N(0, 1 /
  fan-in), other leaves N(0, 0.3^2) (numpy, from the shapes alone: nothing to compile)."""
  model = build_model(config)
  x, t, cond = dummy_inputs(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **cond)['params'])
  store = CheckpointStore(workdir)
  for step, seed in seeds_by_step.items():
    rng = np.random.default_rng(seed)
    std = lambda shape: 1 / np.sqrt(np.prod(shape[:-1])) if len(shape) > 1 else 0.3
    draw = lambda: jax.tree.map(lambda a: np.float32(std(a.shape)) * rng.standard_normal(a.shape, np.float32), shapes)
    store.save(step, {'params': draw(), 'ema_params': draw()}, model_signature(config))
  store.close()
  write_config(config, workdir)


def smaller_config(**overrides):
  """The tiny U-Net at half its width: another architecture of the same data."""
  c = tiny_unet_config(model__base_channels=4, **overrides)
  return validate_config(c)


class CountingModel:
  """The module, counting how often sampling traces it."""
  def __init__(self, model):
    self.model, self.traces = model, 0

  def apply(self, *args, **kwargs):
    self.traces += 1
    return self.model.apply(*args, **kwargs)


def test_sampling_is_guided_by_the_checkpoint_of_the_guide_workdir(tmp_path):
  """generate_samples with the guide of config.sample.guide_workdir (a smaller U-Net, its step-2 EMA) gives the
  samples of D_weak + w (D - D_weak) by hand, for the config's w and another, from one compilation."""
  main_dir, guide_dir = str(tmp_path / 'main'), str(tmp_path / 'small')
  write_workdir(main_dir, validate_config(tiny_unet_config(data__num_classes=0, sample__guidance_scale=1.0)), {4: 0})
  guide_config = smaller_config(data__num_classes=0, sample__guidance_scale=1.0)
  write_workdir(guide_dir, guide_config, {2: 1, 4: 2})
  c = validate_config(
      tiny_unet_config(data__num_classes=0, sample__guidance_scale=1.0, sample__guide_workdir=guide_dir,
                       sample__guide_step=2, sample__autoguidance_scale=2.0))
  model, params, _, mesh = restore_for_inference(c, main_dir)
  weak, weak_params, _, _ = restore_for_inference(guide_config, guide_dir, step=2)

  @jax.jit
  def by_hand(w):
    def model_fn(x, t):
      out, weak_out = model.apply({'params': params}, x, t), weak.apply({'params': weak_params}, x, t)
      return weak_out + w * (out - weak_out)

    return run_sampler(c.sample, 'eps', alphas_cumprod_for(c), model_fn, initial_noise(0, 0, 8, (8, 8, 1)), None)

  counting = CountingModel(model)
  generate_fn = make_generate_fn(c, counting, mesh)
  autoguided, _ = generate_samples(c, generate_fn, params, mesh, 8, seed=0)  # config.sample.autoguidance_scale
  traces = counting.traces
  unguided, _ = generate_samples(c, generate_fn, params, mesh, 8, seed=0, autoguidance_scale=1.0)
  assert counting.traces == traces  # w is traced: another value, the same compilation
  for images, w in ((autoguided, 2.0), (unguided, 1.0)):
    expected = to_uint8(np.asarray(by_hand(jnp.float32(w))))
    assert np.abs(images.astype(np.int32) - expected).max() <= 1
  assert np.abs(unguided.astype(np.float32) - autoguided).mean() > 1.0


@pytest.mark.parametrize('override, field', [
    ({'data__image_size': 16}, 'data.image_size'),
    ({'diffusion__objective': 'v'}, 'diffusion.objective'),
    ({'diffusion__schedule': 'cosine'}, 'diffusion.schedule'),
    ({'data__num_classes': 5}, 'data.num_classes'),
])
def test_a_guide_of_other_data_or_parameterisation_is_refused_naming_the_field(tmp_path, override, field):
  write_config(smaller_config(**override), str(tmp_path))
  with pytest.raises(ValueError, match=field):
    load_guide(validate_config(tiny_unet_config(sample__guide_workdir=str(tmp_path))))


def test_a_missing_guide_workdir_or_step_is_refused_naming_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.sample.guide_workdir'):
    load_guide(validate_config(tiny_unet_config(sample__guide_workdir=str(tmp_path / 'nothing'))))
  write_workdir(str(tmp_path), smaller_config(), {2: 0})
  with pytest.raises(FileNotFoundError, match=r'config.sample.guide_step=3: .* its steps: \[2\]'):
    load_guide(validate_config(tiny_unet_config(sample__guide_workdir=str(tmp_path), sample__guide_step=3)))
