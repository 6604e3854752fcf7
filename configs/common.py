"""The default fields every config has, and the check that runs before anything starts.

Each config file's `get_config(arg)` starts from `base_config()` and changes what it needs; the
command line overrides any field (`--config.train.batch_size=64`). `validate_config` then
rejects unknown choices and impossible numbers with a message naming the field.
"""
import ml_collections

MODEL_NAMES = ('dit', 'unet')
DATA_SOURCES = ('digits', 'image_folder', 'tfds', 'latents')
SCHEDULES = ('linear', 'cosine')
OBJECTIVES = ('eps', 'x0', 'v', 'flow')
FLOW_TIME_SAMPLING = ('uniform', 'logit_normal')
SAMPLERS = ('ddpm', 'ddim', 'dpm++2m', 'heun', 'euler')
SPACINGS = ('leading', 'trailing', 'linspace')
DDPM_VARIANCES = ('posterior', 'beta')
COMPUTE_DTYPES = ('float32', 'bfloat16')
NONFINITE_POLICIES = ('stop', 'skip')


def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = 'digits'        # one of DATA_SOURCES
  c.data.name = ''                # TFDS dataset name (source=tfds)
  c.data.split = 'train'
  c.data.path = ''                # image folder or latent directory
  c.data.image_size = 8           # side length the model sees (pixels, or latent side)
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False
  c.data.prefetch = 2             # host batches prepared ahead by a background thread

  c.model = ml_collections.ConfigDict()
  c.model.name = 'unet'           # key of models.MODELS

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.objective = 'eps'   # what the network predicts; 'flow' = rectified flow velocity
  c.diffusion.schedule = 'linear'
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.flow_time_sampling = 'uniform'
  c.diffusion.label_dropout = 0.1  # probability a label is replaced by the null class

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 1.0         # global norm; 0 disables
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = False      # decay min(ema_decay, (1 + step) / (10 + step))

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 400_000
  c.train.batch_size = 256        # global, across all devices and hosts
  c.train.compute_dtype = 'float32'
  c.train.remat = False
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.keep_checkpoints = 3
  c.train.sample_every = 10_000   # PNG grid of EMA samples; 0 disables
  c.train.sample_grid = 64
  c.train.nonfinite = 'stop'      # 'stop': error naming the step; 'skip': drop the update, count it

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = 'ddim'
  c.sample.num_steps = 50
  c.sample.guidance_scale = 1.0   # 1 = plain conditional sampling
  c.sample.eta = 0.0
  c.sample.spacing = 'leading'
  c.sample.ddpm_variance = 'posterior'
  c.sample.clip_denoised = True
  c.sample.num_samples = 1000
  c.sample.batch_size = 250
  c.sample.seed = 1
  c.sample.use_ema = True
  c.sample.output = 'samples.npz'  # relative to the workdir

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # -1: all devices not used by the other axis
  c.mesh.fsdp = 1

  c.evals = ml_collections.ConfigDict()  # name -> ConfigDict(every_steps=..., num_samples=...)
  return c


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


def validate_config(config):
  """Raises ValueError naming the first invalid field; returns the config otherwise."""
  from models import MODELS  # a registry lookup; imported here so configs stay light
  _choice(config, 'model.name', tuple(MODELS))
  _choice(config, 'data.source', DATA_SOURCES)
  _choice(config, 'diffusion.schedule', SCHEDULES)
  _choice(config, 'diffusion.objective', OBJECTIVES)
  _choice(config, 'diffusion.flow_time_sampling', FLOW_TIME_SAMPLING)
  _choice(config, 'sample.sampler', SAMPLERS)
  _choice(config, 'sample.spacing', SPACINGS)
  _choice(config, 'sample.ddpm_variance', DDPM_VARIANCES)
  _choice(config, 'train.compute_dtype', COMPUTE_DTYPES)
  _choice(config, 'train.nonfinite', NONFINITE_POLICIES)
  for path in ('data.image_size', 'data.channels', 'diffusion.num_timesteps', 'train.num_steps',
               'train.batch_size', 'train.log_every', 'train.keep_checkpoints', 'sample.num_steps',
               'sample.num_samples', 'sample.batch_size', 'train.checkpoint_every'):
    _positive(config, path)
  for path in ('data.num_classes', 'optim.warmup_steps', 'optim.weight_decay', 'optim.grad_clip',
               'train.sample_every', 'sample.eta', 'data.prefetch'):
    _positive(config, path, allow_zero=True)
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
  flow = config.diffusion.objective == 'flow'
  flow_samplers = ('euler', 'heun')
  if flow and config.sample.sampler not in flow_samplers:
    raise ValueError(f'config.sample.sampler={config.sample.sampler!r} does not apply to '
                     f'config.diffusion.objective=\'flow\'; choose one of {flow_samplers}')
  if config.data.source in ('image_folder', 'latents') and not config.data.path:
    raise ValueError(f'config.data.path is empty; data.source={config.data.source!r} needs a directory')
  if config.data.source == 'tfds' and not config.data.name:
    raise ValueError("config.data.name is empty; data.source='tfds' needs a TFDS dataset name, "
                     "e.g. --config.data.name=cifar10")
  if config.data.num_classes == 0 and config.sample.guidance_scale != 1.0:
    raise ValueError('config.sample.guidance_scale needs class labels (config.data.num_classes > 0)')
  for axis in ('data', 'fsdp'):
    if config.mesh[axis] == 0 or config.mesh[axis] < -1:
      raise ValueError(f'config.mesh.{axis}={config.mesh[axis]} must be a positive size or -1')
  for name, ev in config.evals.items():
    from evaluation import EVALUATORS
    if name not in EVALUATORS:
      raise ValueError(f'config.evals.{name}: unknown evaluator; choose from {", ".join(EVALUATORS)}')
    if ev.get('every_steps', 0) < 0 or ev.get('num_samples', 1) <= 0:
      raise ValueError(f'config.evals.{name}: every_steps must be >= 0 and num_samples > 0')
  return config
