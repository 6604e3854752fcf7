"""The checks that run before anything starts: unknown choices and impossible numbers, each with a message
naming the field and what to do.

`validate_config` also fills in what the config derives from elsewhere (config.text.vocab_size from the
tokenizer). `config_from_json` reads a run's stored config.json back over today's defaults.
"""
import json
import logging
import os

import ml_collections

from configs.default import base_config
from diffusion.karras import schedule_karras_sigmas
from diffusion.objectives import LOSS_WEIGHTINGS
from diffusion.schedules import alphas_cumprod_for
from diffusion.transport import PATHS, PREDICTIONS, TRANSPORT_LOSS_WEIGHTS
from diffusion.transport_samplers import DIFFUSION_FORMS, LAST_STEPS, TRANSPORT_SAMPLERS
from evaluation import check_eval_config
from models import MODELS
from models.conditioning import is_classifier
from models.dit import MLPS, NORMS
from models.dinov2 import DINOV2_VARIANTS, PATCH_SIZE
from text.tokenizers import tokenizer_for
from training.ema import check_ema_config

MODEL_NAMES = ('dit', 'unet')
DATA_SOURCES = ('digits', 'image_folder', 'tfds', 'latents')
SCHEDULES = ('linear', 'cosine')
OBJECTIVES = ('eps', 'x0', 'v', 'flow', 'transport')
FLOW_TIME_SAMPLING = ('uniform', 'logit_normal')
SAMPLERS = ('ddpm', 'ddim', 'dpm++2m', 'heun', 'euler') + TRANSPORT_SAMPLERS
PRECONDITIONINGS = ('none', 'edm')
LR_DECAYS = ('linear', 'cosine', 'inverse_sqrt')  # training/state.learning_rate_schedule
SPACINGS = ('leading', 'trailing', 'linspace', 'karras')  # karras: dpm++2m only
DDPM_VARIANCES = ('posterior', 'beta')
COMPUTE_DTYPES = ('float32', 'bfloat16')
TEXT_ENCODERS = ('', 'small', 'clip')
TOKENIZERS = ('words', 'clip_bpe')
VAE_CONFIGS = ('sd', 'tiny')  # models.vae SD_VAE_CONFIG, TINY_VAE_CONFIG (tests)
LATENT_DTYPES = ('float16', 'float32')
NONFINITE_POLICIES = ('stop', 'skip')
REMAT_POLICIES = ('full', 'dots')  # models/layers.remat_block
QKV_ORDERS = ('legacy', 'new')  # models/adm_convert.py
REPA_ENCODERS = ('digits',) + tuple(DINOV2_VARIANTS)
REPA_WEIGHTS_HINT = {
    False: 'the .msgpack converted from the DINOv2 checkpoint (models/dinov2.py)',
    True: 'the workdir of python main.py --config=configs/digits_encoder.py --workdir=runs/digits_encoder'
}


def _choice(config, path, choices):
  value = config
  for key in path.split('.'):
    value = value[key]
  if value not in choices:
    raise ValueError(f'config.{path}={value!r} is not valid; choose one of {", ".join(map(repr, choices))}')


def _positive(config, path, allow_zero=False):
  value = config
  for key in path.split('.'):
    value = value[key]
  if value < 0 or (value == 0 and not allow_zero):
    raise ValueError(f'config.{path}={value!r} must be {"non-negative" if allow_zero else "positive"}')


def _validate_text_and_latents(config):
  _choice(config, 'text.encoder', TEXT_ENCODERS)
  _choice(config, 'data.tokenizer', TOKENIZERS)
  _choice(config, 'data.vae_config', VAE_CONFIGS)
  _choice(config, 'encode.dtype', LATENT_DTYPES)
  _choice(config, 'encode.compute_dtype', COMPUTE_DTYPES)
  for path in ('data.latent_scale', 'encode.batch_size', 'encode.shard_size', 'encode.num_workers', 'text.width',
               'text.depth', 'text.num_heads', 'text.mlp_ratio'):
    _positive(config, path)
  if config.data.max_tokens < 2:
    raise ValueError(f'config.data.max_tokens={config.data.max_tokens} must be >= 2 (start and end tokens)')
  needs_tokens = config.data.captions or config.text.encoder
  if config.data.tokenizer == 'clip_bpe' and needs_tokens and not config.data.vocab_path:
    raise ValueError("config.data.tokenizer='clip_bpe' needs config.data.vocab_path (bpe_simple_vocab_16e6.txt.gz "
                     'from the open_clip_torch wheel; see text/clip_bpe.py)')
  if config.text.encoder:
    if not config.data.captions:
      raise ValueError(f'config.text.encoder={config.text.encoder!r} trains on captions; set '
                       '--config.data.captions=True')
    if config.text.width % config.text.num_heads:
      raise ValueError(f'config.text.width={config.text.width} is not divisible by text.num_heads='
                       f'{config.text.num_heads}')
    if config.text.encoder == 'clip' and (config.data.tokenizer != 'clip_bpe' or not config.text.clip_weights):
      raise ValueError("config.text.encoder='clip' needs config.data.tokenizer='clip_bpe' and "
                       'config.text.clip_weights (python -m models.clip_convert --text_only ...)')
    vocab = tokenizer_for(config.data).vocab_size
    if config.text.vocab_size and config.text.vocab_size != vocab:
      raise ValueError(f'config.text.vocab_size={config.text.vocab_size} but the tokenizer (config.data.tokenizer='
                       f'{config.data.tokenizer!r}, vocab_path={config.data.vocab_path!r}) has {vocab} tokens: '
                       'leave it 0 to take the tokenizer\'s, or use the vocabulary the model was trained with')
    config.text.vocab_size = vocab
    if config.data.num_classes == 0 and not config.text.eval_prompts:
      raise ValueError('a text model without classes needs config.text.eval_prompts (prompts for sample grids '
                       'and evaluators)')
  if config.data.random_crop and (config.data.source not in ('image_folder', 'tfds') or config.data.captions):
    raise ValueError(f'config.data.random_crop=True crops images as they are decoded: it needs data.source '
                     f"'image_folder' or 'tfds' without captions (got source={config.data.source!r}, "
                     f'captions={config.data.captions}); the digits are stored resized and latents are encoded '
                     'whole, so set --config.data.random_crop=False')
  if config.data.source == 'latents' and config.data.random_flip:
    raise ValueError('config.data.random_flip flips latents, which is not the latent of the flipped image; '
                     'set it to False: the encode job stores the flipped images\' latents (config.encode.flips)')
  if config.data.source == 'latents' and config.sample.clip_denoised:
    raise ValueError('config.sample.clip_denoised=True clips the predicted x0 to [-1, 1], the range of pixels; '
                     "latents (data.source='latents') are not confined to it: set --config.sample.clip_denoised=False")
  pixels = config.data.pixels
  if pixels.source and pixels.source not in ('digits', 'image_folder', 'tfds'):
    raise ValueError(f"config.data.pixels.source={pixels.source!r} is not one of 'digits', 'image_folder', 'tfds'")


def config_from_json(path):
  """A run's config.json (jobs/restore.write_config) laid over the current defaults, validated: a workdir written before
  a field existed loads with that field's default."""
  with open(path) as f:
    stored = ml_collections.ConfigDict(json.load(f))
  config = base_config()
  config.update(stored)
  return validate_config(config)


def validate_config(config):
  """Raises ValueError naming the first invalid field; returns the config otherwise."""
  _choice(config, 'model.name', tuple(MODELS))
  _choice(config, 'data.source', DATA_SOURCES)
  _choice(config, 'diffusion.schedule', SCHEDULES)
  _choice(config, 'diffusion.objective', OBJECTIVES)
  _choice(config, 'diffusion.flow_time_sampling', FLOW_TIME_SAMPLING)
  _choice(config, 'sample.sampler', SAMPLERS)
  _validate_transport(config)
  _choice(config, 'diffusion.preconditioning', PRECONDITIONINGS)
  _choice(config, 'diffusion.loss_weighting', LOSS_WEIGHTINGS)
  _choice(config, 'optim.decay', LR_DECAYS)
  _choice(config, 'sample.spacing', SPACINGS)
  _choice(config, 'sample.ddpm_variance', DDPM_VARIANCES)
  _choice(config, 'train.compute_dtype', COMPUTE_DTYPES)
  _choice(config, 'train.nonfinite', NONFINITE_POLICIES)
  _choice(config, 'train.remat_policy', REMAT_POLICIES)
  _choice(config, 'weights.qkv_order', QKV_ORDERS)
  for path in ('data.image_size', 'data.channels', 'diffusion.num_timesteps', 'train.num_steps', 'train.batch_size',
               'train.log_every', 'train.keep_checkpoints', 'sample.num_steps', 'sample.num_samples',
               'sample.batch_size', 'train.checkpoint_every', 'diffusion.sigma_data', 'sample.karras_rho',
               'sample.flow_shift', 'train.steps_per_call', 'train.grad_accum_steps', 'data.num_workers',
               'val.num_examples', 'val.batch_size', 'sample.s_noise'):
    _positive(config, path)
  for path in ('data.num_classes', 'optim.warmup_steps', 'optim.decay_steps', 'optim.weight_decay', 'optim.grad_clip',
               'train.sample_every', 'train.sample_grid', 'train.profile_steps', 'mesh.min_shard_size', 'sample.eta',
               'data.prefetch', 'sample.karras_sigma_max', 'val.every_steps', 'sample.s_churn', 'sample.s_tmin',
               'sample.guide_step'):
    _positive(config, path, allow_zero=True)
  if config.train.batch_size % config.train.grad_accum_steps:
    raise ValueError(f'config.train.grad_accum_steps={config.train.grad_accum_steps} must divide '
                     f'config.train.batch_size={config.train.batch_size} into equal microbatches')
  if not 0 < config.optim.learning_rate < 1:
    raise ValueError(f'config.optim.learning_rate={config.optim.learning_rate} must be in (0, 1)')
  if not 0 <= config.optim.ema_decay < 1:
    raise ValueError(f'config.optim.ema_decay={config.optim.ema_decay} must be in [0, 1)')
  if not 0 <= config.diffusion.label_dropout < 1:
    raise ValueError(f'config.diffusion.label_dropout={config.diffusion.label_dropout} must be in [0, 1)')
  if not 0 < config.diffusion.beta_start < config.diffusion.beta_end < 1:
    raise ValueError('config.diffusion.beta_start and beta_end must satisfy 0 < beta_start < beta_end < 1, '
                     f'got {config.diffusion.beta_start} and {config.diffusion.beta_end}')
  if config.sample.guidance_scale < 0:
    raise ValueError(f'config.sample.guidance_scale={config.sample.guidance_scale} must be >= 0')
  if config.sample.eta > 1:
    raise ValueError(f'config.sample.eta={config.sample.eta} must be in [0, 1] (DDIM: 0 deterministic, 1 the DDPM '
                     'posterior variance; above 1 the step has no real noise scale)')
  flow = config.diffusion.objective == 'flow'
  if not flow and config.sample.sampler in ('ddpm', 'ddim', 'dpm++2m') and config.sample.spacing != 'karras':
    most = config.diffusion.num_timesteps - (config.sample.sampler == 'dpm++2m' and config.sample.spacing != 'trailing')
    if config.sample.num_steps > most:
      raise ValueError(f'config.sample.num_steps={config.sample.num_steps}: sampler {config.sample.sampler!r} with '
                       f'spacing {config.sample.spacing!r} takes at most {most} steps of the '
                       f'config.diffusion.num_timesteps={config.diffusion.num_timesteps} timesteps')
  flow_samplers = ('euler', 'heun')
  if flow and config.sample.sampler not in flow_samplers:
    raise ValueError(f'config.sample.sampler={config.sample.sampler!r} does not apply to '
                     f'config.diffusion.objective=\'flow\'; choose one of {flow_samplers}')
  if config.sample.spacing == 'karras' and config.sample.sampler != 'dpm++2m':
    raise ValueError(f"config.sample.spacing='karras' applies to config.sample.sampler='dpm++2m' (DPM++ 2M Karras), "
                     f"not {config.sample.sampler!r}: euler and heun always use Karras noise levels, ddpm and ddim "
                     "need integer timesteps; choose spacing leading, trailing or linspace")
  if config.sample.s_churn and (flow or config.sample.sampler not in flow_samplers):
    raise ValueError(f'config.sample.s_churn={config.sample.s_churn} (EDM stochastic sampling) applies to samplers '
                     f"'heun' and 'euler' on VP objectives (eps, x0, v), not {config.sample.sampler!r} with objective "
                     f"{config.diffusion.objective!r}; set it to 0 or choose sampler heun")
  if not config.sample.s_tmin < config.sample.s_tmax:
    raise ValueError(f'config.sample.s_tmin={config.sample.s_tmin} must be below config.sample.s_tmax='
                     f'{config.sample.s_tmax} (the noise levels where S_churn applies)')
  uses_karras = config.sample.sampler in flow_samplers or config.sample.spacing == 'karras'
  if config.sample.karras_sigma_max and not flow and uses_karras:
    schedule_karras_sigmas(alphas_cumprod_for(config), 2, sigma_max=config.sample.karras_sigma_max)  # in range?
  if config.diffusion.learn_sigma and (flow or config.diffusion.preconditioning != 'none'):
    raise ValueError('config.diffusion.learn_sigma=True learns the variances of discrete VP steps: it needs '
                     "objective eps, x0 or v and preconditioning 'none'")
  if config.diffusion.loss_weighting == 'min_snr':
    _positive(config, 'diffusion.min_snr_gamma')
    if flow or config.diffusion.preconditioning != 'none':
      raise ValueError("config.diffusion.loss_weighting='min_snr' weights discrete VP timesteps by their SNR: it "
                       "needs objective eps, x0 or v and preconditioning 'none' (EDM weights its own loss)")
  if config.diffusion.preconditioning == 'edm' and config.diffusion.objective != 'x0':
    raise ValueError("config.diffusion.preconditioning='edm' makes the network an x0 denoiser; set "
                     f"config.diffusion.objective='x0' (got {config.diffusion.objective!r})")
  interval = tuple(config.sample.guidance_interval)
  if interval and (len(interval) != 2 or not 0 <= interval[0] <= interval[1]):
    raise ValueError(f'config.sample.guidance_interval={interval} must be () or (lo, hi) network times '
                     'with 0 <= lo <= hi')
  if not 0 <= config.sample.guidance_channels <= config.data.channels:
    raise ValueError(f'config.sample.guidance_channels={config.sample.guidance_channels} must be in [0, '
                     f'data.channels={config.data.channels}] (0 guides every channel)')
  if config.data.source in ('image_folder', 'latents') and not config.data.path:
    raise ValueError(f'config.data.path is empty; data.source={config.data.source!r} needs a directory')
  if config.data.source == 'tfds' and not config.data.name:
    raise ValueError("config.data.name is empty; data.source='tfds' needs a TFDS dataset name, "
                     "e.g. --config.data.name=cifar10")
  if config.data.num_classes == 0 and not config.text.encoder and config.sample.guidance_scale != 1.0:
    raise ValueError('config.sample.guidance_scale needs class labels (config.data.num_classes > 0) or text '
                     '(config.text.encoder)')
  _validate_text_and_latents(config)
  _validate_model_shape(config)
  _validate_dit_blocks(config)
  _validate_classifier(config)
  _validate_super_res(config)
  _validate_repa(config)
  for axis in ('num_devices', 'data', 'fsdp'):
    if config.mesh[axis] == 0 or config.mesh[axis] < -1:
      raise ValueError(f'config.mesh.{axis}={config.mesh[axis]} must be a positive size or -1')
  for name, ev in config.evals.items():
    check_eval_config(name, ev)
  check_val_config(config)
  check_ema_config(config)
  _validate_steps_per_call(config)
  return config


def _validate_transport(config):
  """Objective 'transport' (diffusion/transport.py) goes with its own samplers and loss; its fields in range."""
  d, sample = config.diffusion, config.sample
  if d.objective != 'transport':
    if sample.sampler in TRANSPORT_SAMPLERS:
      raise ValueError(f'config.sample.sampler={sample.sampler!r} samples SiT transports: it needs '
                       f"config.diffusion.objective='transport' (got {d.objective!r})")
    if d.cosine_loss_weight:
      raise ValueError(f'config.diffusion.cosine_loss_weight={d.cosine_loss_weight} compares velocities: it needs '
                       "config.diffusion.objective='transport' with prediction 'velocity'; set it to 0")
    return
  if sample.sampler not in TRANSPORT_SAMPLERS:
    raise ValueError(f"config.sample.sampler={sample.sampler!r} does not apply to config.diffusion.objective="
                     f"'transport'; choose one of {', '.join(TRANSPORT_SAMPLERS)}")
  for path, choices in (('diffusion.path', PATHS), ('diffusion.prediction', PREDICTIONS),
                        ('diffusion.transport_loss_weight', TRANSPORT_LOSS_WEIGHTS),
                        ('sample.diffusion_form', DIFFUSION_FORMS), ('sample.last_step', LAST_STEPS)):
    _choice(config, path, choices)
  for path in ('diffusion.train_eps', 'diffusion.sample_eps', 'sample.last_step_size'):
    value = config[path.split('.')[0]][path.split('.')[1]]
    if not 0 <= value < 0.5:
      raise ValueError(f'config.{path}={value} must be in [0, 0.5): a margin at the ends of SiT time [0, 1]')
  for path in ('sample.atol', 'sample.rtol', 'sample.max_adaptive_steps'):
    _positive(config, path)
  _positive(config, 'sample.diffusion_norm', allow_zero=True)
  _positive(config, 'diffusion.cosine_loss_weight', allow_zero=True)
  if d.learn_sigma or d.loss_weighting != 'uniform' or d.preconditioning != 'none':
    raise ValueError("config.diffusion.objective='transport' weights its own loss (diffusion.transport_loss_weight): "
                     "set learn_sigma=False, loss_weighting='uniform' and preconditioning='none'")
  if d.transport_loss_weight != 'none' and d.prediction == 'velocity':
    raise ValueError(f'config.diffusion.transport_loss_weight={d.transport_loss_weight!r} weights score and noise '
                     "predictions (SiT leaves velocity unweighted): set it to 'none' or change diffusion.prediction")
  if d.cosine_loss_weight and d.prediction != 'velocity':
    raise ValueError(f'config.diffusion.cosine_loss_weight={d.cosine_loss_weight} compares velocities: it needs '
                     f"diffusion.prediction='velocity' (got {d.prediction!r})")
  if sample.sampler != 'ode_dopri5' and sample.num_steps < 2:
    raise ValueError(f'config.sample.num_steps={sample.num_steps}: {sample.sampler!r} runs num_steps - 1 steps over '
                     "SiT's grid of num_steps times; use at least 2")
  if sample.flow_shift != 1 and sample.sampler not in ('ode_euler', 'ode_heun'):
    raise ValueError(f'config.sample.flow_shift={sample.flow_shift} shifts the fixed time grid of ode_euler and '
                     f'ode_heun; {sample.sampler!r} does not use it: set it to 1 or choose one of those')
  if sample.sampler in ('sde_euler', 'sde_heun') and sample.diffusion_form == 'sbdm' and d.path != 'vp' and \
      d.prediction == 'velocity' and not d.sample_eps:
    raise ValueError(f"config.sample.diffusion_form='sbdm' is infinite at t = 0 on path {d.path!r}, where a velocity "
                     'model samples from with config.diffusion.sample_eps=0: set --config.diffusion.sample_eps=1e-3')
  if sample.classifier_workdir:
    raise ValueError('config.sample.classifier_workdir: classifier guidance adds d log p(y | x_t) / d x_t to the '
                     "noise prediction of discrete VP diffusion; objective 'transport' has no such form")


def _validate_dit_blocks(config):
  """DiT's block options (LightningDiT's): known names, heads that split the hidden size, and for 2-D RoPE a head dim
  of whole row and column halves of channel pairs."""
  if config.model.name != 'dit':
    return
  field = lambda key: config.model.get(key, getattr(MODELS['dit'], key))
  for key, choices in (('mlp', MLPS), ('norm', NORMS)):
    if field(key) not in choices:
      raise ValueError(f'config.model.{key}={field(key)!r} is not valid; choose one of {", ".join(map(repr, choices))}')
  hidden, heads = field('hidden_size'), field('num_heads')
  if hidden % heads:
    raise ValueError(f'config.model.hidden_size={hidden} is not a multiple of config.model.num_heads={heads}: '
                     'each head takes an equal share of the hidden size')
  if field('rope') and (hidden // heads) % 4:
    raise ValueError(f'config.model.rope=True needs a head dim (config.model.hidden_size / num_heads = {hidden} / '
                     f'{heads} = {hidden // heads}) divisible by 4: 2-D RoPE turns channel pairs, half of them by the '
                     'row and half by the column; change hidden_size or num_heads, or set --config.model.rope=False')


def _validate_model_shape(config):
  """The image side fits the model: whole DiT patches, and a U-Net's halvings (one per channel_mult level but the
  last) leave whole pixels for its skip connections."""
  size, name = config.data.image_size, config.model.name
  field = lambda key: config.model.get(key, getattr(MODELS[name], key))  # the config's, else the model's default
  if name == 'dit' and size % field('patch_size'):
    raise ValueError(f'config.data.image_size={size} is not a multiple of config.model.patch_size='
                     f'{field("patch_size")}: DiT cuts the image into whole patches')
  if name in ('unet', 'adm_classifier'):
    levels = len(field('channel_mult'))
    if size % 2**(levels - 1):
      raise ValueError(f'config.data.image_size={size} is not a multiple of {2 ** (levels - 1)}: '
                       f'config.model.channel_mult={tuple(field("channel_mult"))} halves the image {levels - 1} times')


def _validate_classifier(config):
  """A classifier config trains on labels and draws no samples; classifier guidance needs a VP objective."""
  if config.sample.classifier_scale < 0:
    raise ValueError(f'config.sample.classifier_scale={config.sample.classifier_scale} must be >= 0')
  if config.sample.classifier_workdir and config.diffusion.objective == 'flow':
    raise ValueError('config.sample.classifier_workdir: classifier guidance adds d log p(y | x_t) / d x_t to the '
                     "noise prediction of discrete VP diffusion; objective 'flow' has no such form")
  if not is_classifier(config):
    return
  if config.data.num_classes < 2:
    raise ValueError(f'config.model.name={config.model.name!r} is a classifier: it needs config.data.num_classes >= 2, '
                     f'got {config.data.num_classes}')
  if config.text.encoder or config.data.captions:
    raise ValueError(f'config.model.name={config.model.name!r} is a class classifier; it takes no text '
                     '(set config.text.encoder=\'\' and config.data.captions=False)')
  if config.diffusion.objective in ('flow', 'transport') or config.diffusion.preconditioning != 'none':
    raise ValueError(f'config.model.name={config.model.name!r} reads images noised by the discrete VP schedule as '
                     "they are: set config.diffusion.objective='eps' (not 'flow' or 'transport') and "
                     "preconditioning='none'")
  if config.train.sample_grid or config.evals:
    raise ValueError(f'config.model.name={config.model.name!r} is a classifier and draws no samples: set '
                     '--config.train.sample_grid=0 and leave config.evals empty (its training logs loss and accuracy)')


def _validate_super_res(config):
  """A super-resolution U-Net reads pixels at an integer fraction of the image size."""
  size = config.model.get('low_res_size', 0)
  if config.sample.low_res_samples and not size:
    raise ValueError('config.sample.low_res_samples is set, but the model is not a super-resolution model '
                     '(config.model.low_res_size=0); use a config such as configs/adm_upsampler.py')
  if not size:
    return
  if config.model.name != 'unet':
    raise ValueError(f'config.model.low_res_size={size}: super-resolution is a U-Net option (ADM\'s SuperResModel); '
                     f"config.model.name={config.model.name!r} does not take it: set --config.model.name=unet")
  image_size = config.data.image_size
  if size < 0 or size >= image_size or image_size % size:
    raise ValueError(f'config.model.low_res_size={size} must divide config.data.image_size={image_size} and be '
                     'smaller (the low-resolution input is the image area-downsampled by an integer factor)')
  if config.data.source == 'latents' or config.text.encoder:
    raise ValueError(f'config.model.low_res_size={size}: super-resolution models here work on pixels and class '
                     "labels: set config.data.source to 'digits', 'image_folder' or 'tfds' and config.text.encoder=''")


def _validate_repa(config):
  """REPA (training/repa.py): a known encoder of the data's images (on latents: of data.pixels, the images stored
  beside them) whose token grid is the DiT's; fills in repa.encoder_dim."""
  repa = config.repa
  if not repa.encoder:
    return
  _choice(config, 'repa.encoder', REPA_ENCODERS)
  if config.model.name != 'dit':
    raise ValueError(f"config.repa.encoder={repa.encoder!r} aligns a DiT's token states; config.model.name="
                     f"{config.model.name!r} has none: set --config.model.name=dit or --config.repa.encoder=''")
  if not repa.encoder_weights:
    raise ValueError(f'config.repa.encoder={repa.encoder!r} needs config.repa.encoder_weights: ' +
                     REPA_WEIGHTS_HINT[repa.encoder == 'digits'])
  depth = config.model.get('depth', MODELS['dit'].depth)
  if not 1 <= repa.depth <= depth:
    raise ValueError(f'config.repa.depth={repa.depth} must name a block of the DiT, 1 to config.model.depth={depth}')
  _positive(config, 'repa.projector_dim')
  _positive(config, 'repa.weight', allow_zero=True)
  _positive(config, 'repa.stop_step', allow_zero=True)
  patch = config.model.get('patch_size', MODELS['dit'].patch_size)
  grid = config.data.image_size // patch
  width, encoder_grid, where = _repa_encoder_shape(config)
  if width is None:
    return
  if encoder_grid != grid:
    fix = ('train the encoder on images of data.image_size with a matching channel_mult'
           if repa.encoder == 'digits' else f'set --config.repa.encoder_resolution={PATCH_SIZE * grid}')
    raise ValueError(f'config.repa.encoder={repa.encoder!r} gives a {encoder_grid}x{encoder_grid} token grid ({where}) '
                     f'but the DiT has {grid}x{grid} tokens (data.image_size={config.data.image_size} / patch_size='
                     f'{patch}); REPA aligns them token by token: {fix}')
  if repa.encoder_dim and repa.encoder_dim != width:
    raise ValueError(f'config.repa.encoder_dim={repa.encoder_dim} but encoder {repa.encoder!r} has {width}-wide '
                     'tokens; leave it 0 to take the encoder\'s')
  repa.encoder_dim = width


def _repa_encoder_shape(config):
  """(token width, token grid side, where that comes from) of config.repa's encoder; (None, None, None) for a
  'digits' encoder whose workdir is gone once repa.encoder_dim is known (a stored run's config, read to sample)."""
  repa = config.repa
  images = config.data.pixels if config.data.source == 'latents' else config.data
  what = 'config.data.pixels' if config.data.source == 'latents' else 'config.data'
  if repa.encoder == 'digits':
    path = os.path.join(repa.encoder_weights, 'config.json')
    if not os.path.exists(path):
      if repa.encoder_dim:
        return None, None, None
      raise FileNotFoundError(f'config.repa.encoder_weights={repa.encoder_weights}: no config.json there; ' +
                              REPA_WEIGHTS_HINT[True])
    encoder = config_from_json(path)
    if encoder.model.name != 'adm_classifier' or encoder.data.image_size != images.image_size or \
        encoder.data.channels != images.channels:
      raise ValueError(f'config.repa.encoder_weights={repa.encoder_weights} holds a {encoder.model.name!r} of '
                       f'{encoder.data.image_size}-pixel, {encoder.data.channels}-channel images; the digits encoder '
                       f"is an 'adm_classifier' of {what}'s {images.image_size}-pixel, "
                       f'{images.channels}-channel images ({REPA_WEIGHTS_HINT[True]})')
    mult = tuple(encoder.model.channel_mult)
    return (int(encoder.model.base_channels * mult[-1]), encoder.data.image_size // 2**(len(mult) - 1),
            f'{path}: image_size {encoder.data.image_size}, channel_mult {mult}')
  if images.channels != 3:
    raise ValueError(f'config.repa.encoder={repa.encoder!r} reads RGB images; {what}.channels='
                     f"{images.channels}: use 3-channel data, or --config.repa.encoder='digits' for the digits")
  side = repa.encoder_resolution
  if side <= 0 or side % PATCH_SIZE:
    raise ValueError(f'config.repa.encoder_resolution={side} must be a positive multiple of the DINOv2 patch, '
                     f'{PATCH_SIZE} (REPA: 224 for a 16x16 token grid)')
  return DINOV2_VARIANTS[repa.encoder]['width'], side // PATCH_SIZE, f'encoder_resolution={side} / patch {PATCH_SIZE}'


def _validate_steps_per_call(config):
  """Logs, checkpoints, grids and evaluations happen between calls of k steps, so k must divide their periods."""
  k = config.train.steps_per_call
  periods = {f'train.{field}': config.train[field] for field in ('num_steps', 'log_every', 'checkpoint_every')}
  if config.train.sample_grid:
    periods['train.sample_every'] = config.train.sample_every
  periods.update({f'evals.{name}.every_steps': ev.get('every_steps', 0) for name, ev in config.evals.items()})
  periods['val.every_steps'] = config.val.every_steps
  bad = [f'config.{path}={value}' for path, value in periods.items() if value and value % k]
  if bad:
    raise ValueError(f'config.train.steps_per_call={k} does not divide {", ".join(bad)}: a jitted call runs {k} '
                     f'steps and logs, checkpoints, samples and evaluates only between calls; make these multiples '
                     f'of {k} or choose a steps_per_call that divides them all')


def check_val_config(config):
  """config.val: held-out data the training source can read, batches that divide the examples."""
  val = config.val  # (the sizes are checked positive with the other sizes, in validate_config)
  if not val.every_steps:
    return
  source = config.data.source
  if source == 'tfds' and not val.split:
    raise ValueError("config.val.every_steps is set: name the held-out TFDS split, e.g. "
                     "--config.val.split=validation")
  if source in ('image_folder', 'latents') and not val.path:
    raise ValueError(f'config.val.every_steps is set: give the held-out {source} directory in config.val.path')
  if source == 'digits':
    raise ValueError("config.val.every_steps is set, but data.source='digits' has no held-out split; use an "
                     'image_folder, tfds or latents source with config.val.path or config.val.split')
  if val.num_examples % val.batch_size:
    raise ValueError(f'config.val.num_examples={val.num_examples} must be a multiple of '
                     f'config.val.batch_size={val.batch_size}')
  if (source in ('image_folder', 'latents') and val.path == config.data.path) or \
      (source == 'tfds' and val.split == config.data.split):
    logging.warning('config.val names the training data itself: the "held-out" loss is a training loss')
