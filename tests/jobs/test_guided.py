"""The one guided model_fn (jobs/guided.py) that sampling, grids, evaluators, sweeps and editing share, and
restoring a model for inference (jobs/restore.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from configs.digits_classifier import get_config as digits_classifier_config
from configs.validate import validate_config
from diffusion import editing
from diffusion.objectives import edm_denoiser
from diffusion.schedules import alphas_cumprod_for
from jobs import edit as edit_job
from jobs.restore import restore_for_inference, setup, write_config
from jobs.sample import make_generate_fn
from models import build_model
from training import sharding as sharding_lib
from training.checkpoints import CheckpointStore, model_signature
from training.state import create_optimizer, create_state
from tests.tiny import tiny_unet_config


def perturbed(params, scale=0.3):
  """Every parameter redrawn around its value, so zero-initialised output layers do not hide the network."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def init_params(config):
  model = build_model(config)
  mesh = sharding_lib.create_mesh(config.mesh)
  return model, perturbed(create_state(config, model, create_optimizer(config.optim), mesh).params), mesh


def test_editing_an_edm_model_runs_the_edm_denoiser():
  """The edit loop sees the same preconditioned denoiser as sampling: D(x) = c_skip x + c_out F(c_in x), built here
  by hand. (A copy of the guidance wrapper in the editing code once read F's raw output as x0.)"""
  c = validate_config(
      tiny_unet_config(diffusion__preconditioning='edm', diffusion__objective='x0', sample__guidance_scale=2.0,
                       sample__clip_denoised=False))
  model, params, _ = init_params(c)
  ac = alphas_cumprod_for(c)
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 1), minval=-1, maxval=1)
  mask = jnp.zeros((8, 8, 8, 1)).at[:, :, :4].set(1.0)
  labels = jnp.arange(8, dtype=jnp.int32)
  rng = jax.random.PRNGKey(1)
  ours = edit_job.make_edit_fn(c, model)(params, {'y': labels}, x0, rng, jnp.float32(2.0), mask=mask)

  def network(x, t):  # F with classifier-free guidance at scale 2, the null label being num_classes
    c_out = model.apply({'params': params}, x, t, y=labels)
    u_out = model.apply({'params': params}, x, t, y=jnp.full_like(labels, c.data.num_classes))
    return u_out + 2.0 * (c_out - u_out)

  by_hand = editing.edit(c.sample, 'x0', ac, edm_denoiser(network, ac, c.diffusion.sigma_data), x0, rng, 1.0, mask)
  np.testing.assert_allclose(ours, by_hand, rtol=2e-4, atol=2e-4)
  raw = editing.edit(c.sample, 'x0', ac, network, x0, rng, 1.0, mask)  # the network's output read as x0
  assert np.abs(np.asarray(ours) - np.asarray(raw)).mean() > 0.05


def tiny_classifier_config():
  c = digits_classifier_config()
  c.model.update(base_channels=8, num_head_channels=8, num_groups=4)
  c.train.batch_size = 16
  c.mesh.min_shard_size, c.mesh.num_devices = 0, 1
  return validate_config(c)


def write_untrained_classifier(workdir):
  """A classifier workdir (config.json and a step-0 checkpoint) with perturbed random weights."""
  c = tiny_classifier_config()
  model, tx, mesh, _, _, store = setup(c, workdir)
  state = create_state(c, model, tx, mesh)
  state = state.replace(params=perturbed(state.params, 1.0), ema_params=perturbed(state.ema_params, 1.0))
  store.save(0, state, model_signature(c))
  store.close()
  write_config(c, workdir)


def test_the_generate_fn_reads_the_guiding_classifier_from_the_config(tmp_path):
  """A sweep builds its sampler from the config alone (ablate.py): the classifier of
  config.sample.classifier_workdir guides it, and config.sample.classifier_scale is what it samples with."""
  write_untrained_classifier(str(tmp_path / 'classifier'))

  def samples(scale):
    c = validate_config(
        tiny_unet_config(data__num_classes=0, sample__guidance_scale=1.0,
                         sample__classifier_workdir=str(tmp_path / 'classifier'), sample__classifier_scale=scale,
                         sample__sampler='ddim'))
    model, params, mesh = init_params(c)
    generate_fn = make_generate_fn(c, model, mesh)  # no classifier handed in
    assert generate_fn.classifier_classes == 10
    noise = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))
    cond = {'y': jnp.arange(8, dtype=jnp.int32)}
    return np.asarray(generate_fn(params, cond, noise, jax.random.PRNGKey(1), jnp.float32(1.0)))

  assert np.abs(samples(0.0) - samples(30.0)).mean() > 1e-3


def test_edit_job_converts_an_rgb_npz_to_grey_with_pil_luma_weights(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / 'rgb.npz', arr_0=rgb, arr_1=np.zeros(3, np.int32))
  grey = edit_job.read_images(str(tmp_path / 'rgb.npz'), 8, 1)
  expected = np.stack([np.asarray(Image.fromarray(image).convert('L')) for image in rgb])[..., None]
  np.testing.assert_array_equal(grey, expected)  # L = (299 R + 587 G + 114 B) / 1000, not the channel mean
  assert (grey != rgb.mean(-1, keepdims=True).astype(np.uint8)).any()


def test_inference_reads_the_weights_without_the_optimizer_state(tmp_path):
  """A checkpoint whose optimizer state this config could not restore (written with SGD's, not AdamW's) still
  samples: restoring for inference reads the EMA or the params alone."""
  c = validate_config(tiny_unet_config())
  model = build_model(c)
  mesh = sharding_lib.create_mesh(c.mesh)
  state = create_state(c, model, optax.sgd(0.1), mesh)
  state = state.replace(params=perturbed(state.params), ema_params=perturbed(state.ema_params, 0.5))
  store = CheckpointStore(str(tmp_path), keep=3)
  store.save(4, state, model_signature(c))
  store.close()
  for use_ema, expected in ((True, state.ema_params), (False, state.params)):
    _, weights, step, _ = restore_for_inference(c, str(tmp_path), use_ema=use_ema)
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, weights, expected)
