"""Classifier guidance (diffusion/classifier_guidance.py) on a closed form, and the noisy classifier end to end.

The closed form: data x_0 ~ N(mu_y, s^2 I) for two equally likely classes y. Under x_t = sqrt(a) x_0 + sqrt(1 - a)
eps, x_t | y ~ N(sqrt(a) mu_y, v I) with v = a s^2 + 1 - a, so the exact unconditional eps-prediction (a mixture's
score) and the exact classifier p(y | x_t) (a softmax of the two Gaussian log-densities) are known. Guided with scale
1, they make the score of p(x_t | y), and a sampler must draw N(mu_y, s^2 I); with scale 0, the two-mode mixture.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.validate import validate_config
from configs.digits_classifier import get_config as digits_classifier_config
from diffusion.classifier_guidance import classifier_loss, log_prob_gradient
from diffusion.samplers import ddim_sample, ddpm_sample, run_sampler
from diffusion.schedules import linear_alphas_cumprod, sigma_at_timestep, timestep_spacing
from models.conditioning import is_classifier
from tests.tiny import tiny_unet_config

ALPHAS_CUMPROD = linear_alphas_cumprod(1000)
MEANS = jnp.array([[1.5, -0.5], [-1.0, 1.0]])  # mu_0, mu_1; x_0 has shape [1, 1, 2]
S = 0.3


def _alpha_bar(t):
  sigma = sigma_at_timestep(ALPHAS_CUMPROD, t)  # exact at integer t, log-sigma interpolated between
  return (1 / (1 + sigma**2))[:, None]


def exact_classifier(x, t):
  """log p(x_t | y) + const for y = 0, 1: the logits of the exact p(y | x_t)."""
  a = _alpha_bar(t)
  v = a * S**2 + 1 - a
  flat = x.reshape(x.shape[0], 2)
  return jnp.stack([-jnp.sum((flat - jnp.sqrt(a) * m)**2, -1) / (2 * v[:, 0]) for m in MEANS], axis=-1)


def exact_eps(x, t):
  """-sqrt(1 - a) d log p(x_t) / d x_t of the two-class mixture."""
  a = _alpha_bar(t)
  v = a * S**2 + 1 - a
  flat = x.reshape(x.shape[0], 2)
  w = jax.nn.softmax(exact_classifier(x, t), axis=-1)
  score = -sum(w[:, i:i + 1] * (flat - jnp.sqrt(a) * MEANS[i]) for i in range(2)) / v
  return (-jnp.sqrt(1 - a) * score).reshape(x.shape)


def exact_conditional_eps(label):
  """-sqrt(1 - a) d log p(x_t | y) / d x_t: what exact_eps guided by exact_classifier at scale 1 must equal."""
  def eps(x, t):
    a = _alpha_bar(t)
    flat = x.reshape(x.shape[0], 2)
    return (jnp.sqrt(1 - a) * (flat - jnp.sqrt(a) * MEANS[label]) / (a * S**2 + 1 - a)).reshape(x.shape)

  return eps


def draw(sampler, label, scale, n=2000, seed=0, num_steps=25, guide=True):
  """n samples of class `label`: exact_eps guided by exact_classifier at `scale` (guide=False: the sampler on
  exact_conditional_eps, unguided)."""
  noise = jax.random.normal(jax.random.PRNGKey(seed), (n, 1, 1, 2))
  gradient = log_prob_gradient(exact_classifier, jnp.full((n,), label), scale) if guide else None
  eps = exact_eps if guide else exact_conditional_eps(label)
  rng = jax.random.PRNGKey(seed + 1)
  if sampler == 'ddpm':
    out = ddpm_sample(eps, noise, ALPHAS_CUMPROD, timestep_spacing(1000, num_steps, 'linspace'), 'eps', rng=rng,
                      clip_denoised=False, classifier_gradient=gradient)
  else:
    c = ml_collections.ConfigDict(
        dict(sampler=sampler, num_steps=num_steps, spacing='linspace', eta=0.0, clip_denoised=False, karras_rho=7.0,
             karras_sigma_max=0.0))
    out = run_sampler(c, 'eps', ALPHAS_CUMPROD, eps, noise, rng, classifier_gradient=gradient)
  return np.asarray(out).reshape(n, 2)


@pytest.mark.parametrize('sampler', ['ddim', 'dpm++2m', 'heun', 'euler'])
def test_scale_1_with_the_exact_classifier_is_the_exact_conditional_model(sampler):
  """Bayes: eps(x_t) - sqrt(1 - a_t) d log p(y | x_t) / d x_t is the class-conditional eps, for every sampler
  that guides the noise prediction (DDIM after clipping, which is off here)."""
  for label in (0, 1):
    np.testing.assert_allclose(draw(sampler, label, 1.0, n=256), draw(sampler, label, 1.0, n=256, guide=False),
                               atol=2e-4)


@pytest.mark.parametrize('sampler, num_steps', [('ddim', 100), ('ddpm', 1000)])
def test_scale_1_with_exact_models_samples_the_class_conditional(sampler, num_steps):
  """DDPM's mean shift (Sohl-Dickstein et al.'s approximation) and DDIM reach N(mu_y, s^2 I)."""
  for label in (0, 1):
    x = draw(sampler, label, 1.0, num_steps=num_steps)
    # 2,000 draws of N(mu, 0.3^2): the mean's standard error is 0.007, the std's 0.005; DDIM at 100 steps
    # narrows it by 3%
    np.testing.assert_allclose(x.mean(0), MEANS[label], atol=0.04)
    np.testing.assert_allclose(x.std(0), [S, S], rtol=0.06)


def test_scale_0_samples_the_mixture_and_larger_scales_stay_in_the_class():
  nearest = lambda x: np.argmin(((x[:, None] - np.asarray(MEANS)[None])**2).sum(-1), axis=1)
  unguided = nearest(draw('ddim', 0, 0.0, num_steps=100))
  assert 0.45 < unguided.mean() < 0.55  # the two modes, equally likely
  sharp = draw('ddim', 1, 4.0, num_steps=100)
  assert (nearest(sharp) == 1).all()
  assert sharp.std(0).max() < S  # p(y | x)^4 narrows the class mode


def test_guidance_steps_are_guided_diffusions():
  """DDIM: eps - sqrt(1 - a_t) g and x_0 recomputed from it (condition_score). DDPM: each step's mean plus its
  variance times g (condition_mean); checked on two steps, 600 -> 300 -> 0, whose last adds no noise."""
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 1, 1, 2))
  g = lambda x, t: 0.1 * (1 + t[:, None, None, None] / 1000) * jnp.ones_like(x)  # any function of (x, t)
  at = lambda t: jnp.full((4,), float(t))
  a = ALPHAS_CUMPROD[600]

  eps_guided = exact_eps(x, at(600)) - np.sqrt(1 - a) * g(x, at(600))
  np.testing.assert_allclose(
      ddim_sample(exact_eps, x, ALPHAS_CUMPROD, np.array([600], np.int32), 'eps', clip_denoised=False,
                  classifier_gradient=g), (x - np.sqrt(1 - a) * eps_guided) / np.sqrt(a), rtol=1e-5, atol=1e-6)

  def ddpm_step(x, t, t_prev, noise_index, guided):
    a_t, a_p = ALPHAS_CUMPROD[t], ALPHAS_CUMPROD[t_prev] if t_prev >= 0 else 1.0
    beta = 1 - a_t / a_p
    variance = beta * (1 - a_p) / (1 - a_t)
    x0 = (x - np.sqrt(1 - a_t) * exact_eps(x, at(t))) / np.sqrt(a_t)
    mean = np.sqrt(a_p) * beta / (1 - a_t) * x0 + np.sqrt(1 - beta) * (1 - a_p) / (1 - a_t) * x
    if guided:
      mean = mean + variance * g(x, at(t))
    noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), noise_index), x.shape)
    return mean + np.sqrt(variance) * noise

  for guided in (False, True):
    want = ddpm_step(ddpm_step(x, 600, 300, 0, guided), 300, -1, 1, guided)
    got = ddpm_sample(exact_eps, x, ALPHAS_CUMPROD, np.array([600, 300], np.int32), 'eps', clip_denoised=False,
                      classifier_gradient=g if guided else None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ddpm_with_learned_variances_shifts_by_the_learned_variance():
  """ADM's setting (learn_sigma, run_sampler's 'ddpm'): variance values +1 select beta_t; one step 300 -> 0 is then
  the unguided mean plus beta_t g, noise-free as the last step."""
  x = jax.random.normal(jax.random.PRNGKey(4), (4, 1, 1, 2))
  learned = lambda x, t: jnp.concatenate([exact_eps(x, t), jnp.ones_like(x)], axis=-1)
  g = lambda x, t: 0.3 * x + 0.1
  c = ml_collections.ConfigDict(dict(sampler='ddpm', num_steps=1, spacing='trailing', clip_denoised=False))
  run = lambda gradient: run_sampler(c, 'eps', ALPHAS_CUMPROD[:301], learned, x, jax.random.PRNGKey(0), learn_sigma=
                                     True, classifier_gradient=gradient)
  np.testing.assert_allclose(run(g) - run(None), (1 - ALPHAS_CUMPROD[300]) * g(x, None), rtol=1e-4, atol=1e-6)


def test_classifier_loss_is_cross_entropy():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
  loss, correct = classifier_loss(logits, jnp.array([0, 2]))
  log_z = np.log(np.exp(np.asarray(logits)).sum(-1))
  np.testing.assert_allclose(loss, [log_z[0] - 2.0, log_z[1] - 0.0], rtol=1e-6)
  np.testing.assert_array_equal(correct, [1.0, 0.0])


def test_linear_decay_of_the_learning_rate():
  from training.state import learning_rate_schedule
  c = digits_classifier_config().optim  # warmup 100, decay to 0 at step 2000
  lr = learning_rate_schedule(c)
  np.testing.assert_allclose([lr(s) for s in (0, 50, 100, 1000, 2000, 2500)],
                             [0.0, 0.5e-3 * 0.975, 1e-3 * 0.95, 1e-3 * 0.5, 0.0, 0.0], rtol=1e-6, atol=1e-9)


# --- the noisy classifier, trained here and guiding a sampler through config.sample.classifier_workdir ---


def classifier_config():
  c = digits_classifier_config()
  c.train.update(num_steps=150, batch_size=64, log_every=50, checkpoint_every=150)  # 94% / 39% accurate below
  c.optim.update(decay_steps=150, warmup_steps=20)
  c.data.prefetch = 0
  c.mesh.num_devices = 1  # one of the 8 fake devices: sharding is not the point (tests/tiny.py)
  return validate_config(c)


@pytest.fixture(scope='module')
def trained_classifier(tmp_path_factory):
  from jobs.train import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp('classifier'))
  train_and_evaluate(classifier_config(), workdir)
  return workdir


def noisy_digit_accuracy(workdir, t_max):
  """Top-1 accuracy of the classifier's EMA params on 600 digits noised at uniform t in [0, t_max)."""
  from input_pipeline import create_source
  from jobs.restore import restore_for_inference
  c = classifier_config()
  model, params, _, _ = restore_for_inference(c, workdir)
  source = create_source(c.data)
  images, labels = source.images[:600].astype(np.float32), source.labels[:600]
  rng = np.random.default_rng(0)
  t = rng.integers(0, t_max, len(images))
  a = ALPHAS_CUMPROD[t].reshape(-1, 1, 1, 1)
  x_t = np.sqrt(a) * images + np.sqrt(1 - a) * rng.standard_normal(images.shape).astype(np.float32)
  logits = jax.jit(model.apply)({'params': params}, jnp.asarray(x_t), jnp.asarray(t, jnp.float32))
  return float(np.mean(np.argmax(logits, -1) == labels))


def test_noisy_classifier_trains_on_noised_digits(trained_classifier):
  metrics = [json.loads(line) for line in open(os.path.join(trained_classifier, 'metrics.jsonl'))]
  assert metrics[-1]['loss'] < metrics[0]['loss'] - 0.3
  assert 'accuracy' in metrics[-1]
  assert noisy_digit_accuracy(trained_classifier, 100) > 0.8  # chance: 0.1
  assert noisy_digit_accuracy(trained_classifier, 1000) > 0.3  # the noisiest carry no label


def test_sample_job_is_guided_towards_the_labels_it_writes(trained_classifier, tmp_path):
  """An untrained unconditional U-Net guided by the digit classifier: the classifier (at t = 0) must then find the
  labels written beside the samples in most of them; unguided, about one in ten."""
  from jobs.sample import run_sample_job
  from jobs.restore import restore_for_inference
  from jobs.train import train_and_evaluate
  c = tiny_unet_config(data__num_classes=0, sample__guidance_scale=1.0, sample__num_samples=40, sample__batch_size=40,
                       sample__num_steps=10, train__num_steps=2)
  validate_config(c)
  train_and_evaluate(c, str(tmp_path))
  model, params, _, _ = restore_for_inference(classifier_config(), trained_classifier)
  agreement = {}
  for scale in (0.0, 8.0):
    c.sample.update(classifier_workdir=trained_classifier, classifier_scale=scale, output=f'scale{scale}.npz')
    with np.load(run_sample_job(validate_config(c), str(tmp_path))) as f:
      images, labels = f['arr_0'], f['arr_1']
    np.testing.assert_array_equal(labels, np.arange(40) % 10)
    x = images.astype(np.float32) / 127.5 - 1
    logits = model.apply({'params': params}, jnp.asarray(x), jnp.zeros(40))
    agreement[scale] = float(np.mean(np.argmax(logits, -1) == labels))
  assert agreement[0.0] < 0.4 and agreement[8.0] > 0.8, agreement


def test_a_classifier_that_does_not_fit_is_refused(trained_classifier, tmp_path):
  from jobs.guided import load_classifier
  c = tiny_unet_config(sample__classifier_workdir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no config.json there'):
    load_classifier(c)
  c.sample.classifier_workdir = trained_classifier
  c.data.image_size = 16
  with pytest.raises(ValueError, match='data.image_size=8, this model has 16'):
    load_classifier(c)
  c.data.image_size, c.diffusion.schedule = 8, 'cosine'
  with pytest.raises(ValueError, match="trained on the 'linear' noise schedule, this model uses 'cosine'"):
    load_classifier(c)
  c.diffusion.schedule, c.data.num_classes = 'linear', 5
  with pytest.raises(ValueError, match='classifier of 10 classes, this model is conditioned on 5'):
    load_classifier(c)
  c.data.num_classes = 10
  assert load_classifier(c).num_classes == 10


def test_classifier_configs_are_checked():
  c = digits_classifier_config()
  assert is_classifier(c)
  c.train.sample_grid = 16
  with pytest.raises(ValueError, match='draws no samples: set --config.train.sample_grid=0'):
    validate_config(c)
  c = digits_classifier_config()
  c.diffusion.objective, c.sample.sampler = 'flow', 'euler'
  with pytest.raises(ValueError, match="objective='eps'"):
    validate_config(c)
  c = tiny_unet_config(sample__classifier_workdir='runs/x')
  c.diffusion.objective, c.sample.sampler = 'flow', 'euler'
  with pytest.raises(ValueError, match="objective 'flow' has no such form"):
    validate_config(c)
  from jobs import edit
  c = validate_config(
      tiny_unet_config(data__num_classes=0, sample__guidance_scale=1.0, sample__classifier_workdir='runs/x'))
  with pytest.raises(ValueError, match='steers each image towards a class: give it with --labels'):
    edit.edit_conditions(c, 2, classifier_classes=10)  # editing is classifier-guided as sampling is
