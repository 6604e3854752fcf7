"""--mode=edit: img2img (SDEdit) and inpainting of image files with a trained model (diffusion/editing.py).

  # inpaint the white region of mask.png in every image of photos/, as class 3
  python main.py --mode=edit --config=configs/quickstart.py --workdir=runs/quickstart \
      --images=photos/ --mask=mask.png --labels=3
  # img2img: keep the layout of cat.png, redraw it towards a prompt (text models)
  python main.py --mode=edit --config=configs/text_quickstart.py --workdir=runs/text_quickstart \
      --images=cat.png --strength=0.6 --prompt="a handwritten digit seven"

Inputs (--images): an image file, a folder of them, or an npz (`arr_0` uint8 NHWC), centre-cropped and
resized to the model's image size as the training data is. --mask: one image, white = repaint, black =
keep (diffusers' convention), resized (nearest) to the image size and applied to every image. --strength
(default 0.6 for img2img, 1.0 for inpainting) is the fraction of the sampler's steps that run: 0 returns
the input, 1 starts from noise. The sampler, its steps, guidance and seed come from config.sample (DDIM,
DDPM or, for img2img, DPM-Solver++ 2M). Class models take --labels (one for all, or one per image; none:
the null label, an unconditional edit), text models --prompt.

Latent models edit latents: the images are encoded with config.data.vae_weights (posterior mean times
data.latent_scale), the mask is reduced to the latent grid (a latent pixel is kept only if its whole patch
is), and the result is decoded; the kept pixels are then pasted back, since the VAE round trip is lossy.
So in both cases the kept region of the output is the input, exactly.

Output: <workdir>/edits/<name>.npz (`arr_0` edited uint8 images, `arr_1` labels, `inputs`, `keep` mask)
and <name>.png (rows of input, masked input, result); --edit_name sets <name> (default: the input's name and the
kind of edit). An existing output is kept unless --overwrite.
"""
import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from diffusion import editing
from diffusion.schedules import alphas_cumprod_for
from input_pipeline.files import atomic_write, load_samples_npz, refuse_existing, write_png
from input_pipeline.images import center_crop_resize, image_files, image_grid, resize_images, to_uint8
from jobs.guided import guided_model, load_classifier, load_guide
from jobs.restore import restore_for_inference
from jobs.sample import gather_to_host, latent_decoder, sampler_compiler_options
from jobs.vae import load_vae, vae_config_for
from models.conditioning import uses_labels, uses_text
from models.vae import encode_to_latents
from text.tokenizers import tokenize
from training import sharding as sharding_lib

EDIT_DIR = 'edits'


def pixel_shape(config):
  """(image side, channels) of the images the model's data space stands for."""
  data = config.data
  if data.source == 'latents':
    return data.pixels.image_size, data.pixels.channels
  return data.image_size, data.channels


def read_images(path, image_size, channels):
  """uint8 [N, S, S, channels] from an image file, a folder of images, or an npz (arr_0)."""
  if not path:
    raise ValueError('--mode=edit needs --images=<an image file, a folder of images, or an npz>')
  if path.endswith('.npz') and os.path.isfile(path):
    images = load_samples_npz(path)[0]
    if images.shape[1:3] != (image_size, image_size):
      images = resize_images(images, image_size)
  elif os.path.isdir(path) or os.path.isfile(path):
    files = image_files(path) if os.path.isdir(path) else [path]
    mode = 'L' if channels == 1 else 'RGB'
    images = []
    for file in files:
      try:
        with Image.open(file) as image:
          images.append(center_crop_resize(image.convert(mode), image_size))
      except OSError as e:
        raise ValueError(f'--images: cannot read {file} as an image ({e})') from e
    images = np.stack(images)
  else:
    raise FileNotFoundError(f'--images={path!r}: no such file or folder')
  if images.shape[-1] != channels:  # npz of another channel count
    images = np.repeat(images, 3, axis=-1) if channels == 3 else grey(images)
  return images


def grey(images):
  """uint8 RGB [N, H, W, 3] -> [N, H, W, 1] with PIL's luma weights (ITU-R 601-2), as image files and the
  training data are converted."""
  return np.stack([np.asarray(Image.fromarray(image).convert('L')) for image in images])[..., None]


def read_keep_mask(path, image_size):
  """bool [S, S, 1], True where a pixel is kept: black (< 128) in the mask file; white is repainted. The mask is
  scaled (nearest) so its short side is S and centre-cropped, as `center_crop_resize` does the images, so a mask
  drawn on an image covers the same pixels of its crop."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--mask={path!r}: no such file')
  with Image.open(path) as image:
    scale = image_size / min(image.size)
    grey = np.asarray(image.convert('L').resize(tuple(round(s * scale) for s in image.size), Image.NEAREST))
  top, left = (grey.shape[0] - image_size) // 2, (grey.shape[1] - image_size) // 2
  keep = grey[top:top + image_size, left:left + image_size] < 128
  if keep.all():
    raise ValueError(f'--mask={path} is black everywhere: nothing to repaint (white marks the region to repaint)')
  return keep[..., None]


def latent_keep_mask(keep, latent_size):
  """A latent pixel is kept only if every pixel of its patch is kept: [S, S, 1] -> [s, s, 1]."""
  factor = keep.shape[0] // latent_size
  if factor * latent_size != keep.shape[0]:
    raise ValueError(f'image side {keep.shape[0]} is not a multiple of the latent side {latent_size}')
  return keep.reshape(latent_size, factor, latent_size, factor, 1).all(axis=(1, 3))


def edit_conditions(config, count, labels=None, prompt=None, classifier_classes=0):
  """The model's inputs for `count` images, and the labels written to arr_1. With a guiding classifier
  (classifier_classes > 0) the labels are also the classes it steers towards, so they must be given."""
  cond, y = {}, np.full(count, -1, np.int32)
  num_classes = config.data.num_classes if uses_labels(config) else classifier_classes
  if labels:
    if not num_classes:
      raise ValueError('--labels: this model takes no class labels, and no classifier guides it '
                       '(config.sample.classifier_workdir)')
    values = [int(v) for v in str(labels).split(',')]
    if len(values) not in (1, count) or not all(0 <= v < num_classes for v in values):
      raise ValueError(f'--labels={labels}: give one label or one per image ({count}), each in [0, {num_classes})')
    y = np.resize(np.asarray(values, np.int32), count)
  elif classifier_classes:
    raise ValueError('classifier guidance (config.sample.classifier_workdir) steers each image towards a class: '
                     'give it with --labels (one for all, or one per image)')
  if uses_labels(config):
    cond['y'] = np.where(y >= 0, y, config.data.num_classes).astype(np.int32)  # none given: the null label
  elif classifier_classes:
    cond['y'] = y
  if prompt is not None and not uses_text(config):
    raise ValueError('--prompt: this model is not text-conditional (config.text.encoder is empty)')
  if uses_text(config):
    cond['tokens'] = tokenize([prompt or ''] * count, config.data)
  return cond, y


def check_edit_settings(config, strength, inpainting):
  if config.diffusion.objective in ('flow', 'transport'):
    raise ValueError('editing runs the DDIM/DDPM updates of VP models; '
                     f'config.diffusion.objective={config.diffusion.objective!r} has none: use eps, x0 or v')
  editing.check_edit_sampler(config.sample.sampler, inpainting, config.sample.spacing)
  if not 0 <= strength <= 1:
    raise ValueError(f'--strength={strength} must be in [0, 1] (the fraction of the sampler steps that run)')


def make_edit_fn(config, model, classifier=None, guide=None):
  """jitted edit(params, cond, x0, rng, guidance_scale, strength=1.0, mask=None) for a trained model: cond holds
  the model's inputs ({'y'}, {'tokens'}, or {}; with a guiding classifier, its labels 'y'), guided as sampling
  guides it (jobs.guided.guided_model: CFG, autoguidance by config.sample.guide_workdir's model, EDM
  preconditioning, learned variances, classifier guidance from config.sample.classifier_workdir; `classifier`
  and `guide` when the caller loaded them already); strength is static (one compilation per value)."""
  alphas_cumprod = alphas_cumprod_for(config)
  classifier = load_classifier(config) if classifier is None else classifier
  classifier_inputs = None if classifier is None else (classifier.params, np.float32(config.sample.classifier_scale))
  guide = load_guide(config) if guide is None else guide
  guide_inputs = None if guide is None else (guide.params, np.float32(config.sample.autoguidance_scale))

  @functools.partial(jax.jit, static_argnames=('strength',), compiler_options=sampler_compiler_options(config.sample))
  def edit_fn(params, classifier_inputs, guide_inputs, cond, x0, rng, guidance_scale, strength=1.0, mask=None):
    guided = guided_model(config, model, params, cond, guidance_scale, classifier, classifier_inputs, guide,
                          guide_inputs)
    return editing.edit(config.sample, guided.objective, alphas_cumprod, guided.model_fn, x0, rng, strength, mask,
                        guided.learn_sigma, guided.classifier_gradient)

  def run(params, cond, x0, rng, guidance_scale, strength=1.0, mask=None):
    return edit_fn(params, classifier_inputs, guide_inputs, cond, x0, rng, guidance_scale, strength=strength, mask=mask)

  return run


def run_edit_job(config, workdir, images, mask=None, strength=None, labels=None, prompt=None, name=None,
                 overwrite=False):
  """Edits every input image with the newest checkpoint's (EMA) parameters; returns the npz path."""
  inpainting = bool(mask)
  strength = (1.0 if inpainting else 0.6) if strength is None else strength
  check_edit_settings(config, strength, inpainting)
  size, channels = pixel_shape(config)
  inputs = read_images(images, size, channels)
  keep = read_keep_mask(mask, size) if inpainting else None
  classifier, guide = load_classifier(config), load_guide(config)  # before the model: a bad workdir fails first
  cond, y = edit_conditions(config, len(inputs), labels, prompt, 0 if classifier is None else classifier.num_classes)
  name = name or os.path.splitext(os.path.basename(
      os.path.normpath(images)))[0] + ('_inpaint' if inpainting else '_img2img')
  out_path = os.path.join(workdir, EDIT_DIR, name + '.npz')
  png_path = os.path.join(workdir, EDIT_DIR, name + '.png')
  for path in (out_path, png_path):
    refuse_existing(path, overwrite, '--edit_name=<another name>')

  model, params, step, mesh = restore_for_inference(config, workdir, use_ema=config.sample.use_ema)
  x, model_keep, decode = to_model_space(config, inputs, keep)
  edit_fn = make_edit_fn(config, model, classifier, guide)
  logging.info('%s of %d images with %s, %d steps at strength %.2f, guidance %.2f, from step %d',
               'inpainting' if inpainting else 'img2img', len(inputs), config.sample.sampler, config.sample.num_steps,
               strength, config.sample.guidance_scale, step)
  outputs, devices = [], mesh.devices.size
  batch = -(-min(config.sample.batch_size, len(inputs)) // devices) * devices  # split over the mesh
  mask_arg = None if model_keep is None else np.asarray(model_keep, np.float32)
  for start in range(0, len(inputs), batch):
    count = min(batch, len(inputs) - start)
    pad = lambda v: np.concatenate([v[start:start + count], np.repeat(v[start:start + 1], batch - count, axis=0)])
    batch_x, batch_cond = sharding_lib.shared_batch_to_global((pad(x), {k: pad(v) for k, v in cond.items()}), mesh)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.sample.seed), start)
    out = edit_fn(params, batch_cond, batch_x, rng, jnp.float32(config.sample.guidance_scale), strength=float(strength),
                  mask=mask_arg)
    outputs.append(decode(gather_to_host(out)[:count]))
  edited = np.concatenate(outputs)
  if keep is not None:
    edited = np.where(keep[None], inputs, edited)  # exact for pixel models already; latent ones lose detail
  if jax.process_index() == 0:
    write_edits(out_path, png_path, inputs, edited, y, keep)
  return out_path


def to_model_space(config, inputs, keep):
  """(model inputs, mask in the model's space or None, decoder of model outputs to uint8)."""
  pixels = inputs.astype(np.float32) / 127.5 - 1
  if config.data.source != 'latents':
    return pixels, keep, to_uint8
  vae_config = vae_config_for(config.data.vae_config)
  variables = load_vae(config.data.vae_weights, config.data.vae_config)
  latents = np.concatenate([
      np.asarray(encode_to_latents(variables, pixels[i:i + 16], scale=config.data.latent_scale, config=vae_config))
      for i in range(0, len(pixels), 16)
  ])
  return latents, None if keep is None else latent_keep_mask(keep, latents.shape[1]), latent_decoder(config)


def write_edits(out_path, png_path, inputs, edited, labels, keep):
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  extra = {} if keep is None else {'keep': keep[..., 0]}
  with atomic_write(out_path, '.npz') as tmp:
    np.savez(tmp, arr_0=edited, arr_1=labels, inputs=inputs, **extra)
  shown = min(len(inputs), 16)
  masked = inputs[:shown] if keep is None else np.where(keep[None], inputs[:shown], np.uint8(128))
  write_png(png_path, image_grid(np.concatenate([inputs[:shown], masked, edited[:shown]]), columns=shown))
  logging.info('wrote %s (%s) and %s', out_path, edited.shape, png_path)
