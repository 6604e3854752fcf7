"""The default fields every config has, and the check that runs before anything starts.

Each config file's `get_config(arg)` starts from `base_config()` and changes what it needs; the
command line overrides any field (`--config.train.batch_size=64`). `validate_config` then
rejects unknown choices and impossible numbers with a message naming the field.
"""
import json

import ml_collections

MODEL_NAMES = ('dit', 'unet')
DATA_SOURCES = ('digits', 'image_folder', 'tfds', 'latents')
SCHEDULES = ('linear', 'cosine')
OBJECTIVES = ('eps', 'x0', 'v', 'flow')
FLOW_TIME_SAMPLING = ('uniform', 'logit_normal')
SAMPLERS = ('ddpm', 'ddim', 'dpm++2m', 'heun', 'euler')
PRECONDITIONINGS = ('none', 'edm')
LOSS_WEIGHTINGS = ('uniform', 'min_snr')  # diffusion/objectives.loss_weight
LR_DECAYS = ('linear', 'cosine', 'inverse_sqrt')  # train_state.learning_rate_schedule
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


def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = 'digits'        # one of DATA_SOURCES
  c.data.name = ''                # TFDS dataset name (source=tfds), e.g. 'imagenet2012' or 'coco_captions/2014'
  c.data.tfds_data_dir = ''       # where TFDS datasets (also data.pixels') were prepared; '' = $TFDS_DATA_DIR or
                                  # ~/tensorflow_datasets
  c.data.split = 'train'
  c.data.path = ''                # image folder or latent directory
  c.data.image_size = 8           # side length the model sees (pixels, or latent side)
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False
  c.data.random_crop = False      # ADM's classifier augmentation: a crop of 80-100% of the short side (decoded sources)
  c.data.num_workers = 8          # threads decoding and resizing images (image_folder, tfds)
  c.data.prefetch = 2             # host batches (chunks of train.steps_per_call steps) prepared ahead by a thread
  # Captions (text-to-image): batches also carry 'tokens' int32 [B, max_tokens] (input_pipeline/captions.py).
  c.data.captions = False
  c.data.tokenizer = 'words'      # 'words': word list at vocab_path ('' = digit caption words); 'clip_bpe': CLIP BPE
  c.data.vocab_path = ''          # word list, or bpe_simple_vocab_16e6.txt.gz for 'clip_bpe'
  c.data.max_tokens = 77          # token sequence length (CLIP's context)
  # Latents (source='latents', input_pipeline/latents.py): written by --mode=encode from data.pixels.
  c.data.latent_scale = 0.18215   # latents = scale * VAE posterior mean; checked against the stored value
  c.data.vae_weights = ''         # SD-VAE: converted .msgpack or diffusers .safetensors (models/vae_convert.py)
  c.data.vae_config = 'sd'        # one of VAE_CONFIGS
  c.data.pixels = ml_collections.ConfigDict()  # the image dataset --mode=encode encodes into data.path
  c.data.pixels.source = ''       # digits, image_folder or tfds
  c.data.pixels.name = ''
  c.data.pixels.split = 'train'
  c.data.pixels.path = ''
  c.data.pixels.image_size = 256  # pixels; the latent side data.image_size = image_size / 8 for the SD VAE
  c.data.pixels.channels = 3

  c.encode = ml_collections.ConfigDict()  # --mode=encode (input_pipeline/encode.py)
  c.encode.batch_size = 256       # images per device step (global, a multiple of the local device count)
  c.encode.shard_size = 8192      # images per shard file: the unit of resumption
  c.encode.flips = True           # also store the latent of each horizontally flipped image
  c.encode.dtype = 'float16'      # stored latent dtype, one of LATENT_DTYPES
  c.encode.compute_dtype = 'float32'
  c.encode.num_workers = 8        # threads decoding images

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
  c.diffusion.preconditioning = 'none'  # 'edm': Karras et al. 2022 c_skip/c_out/c_in; needs objective 'x0'
  c.diffusion.sigma_data = 0.5   # EDM's data standard deviation (preconditioning='edm')
  c.diffusion.learn_sigma = False  # Improved DDPM learned variances + hybrid loss (ADM, DiT); DDPM samples with them
  # Per-timestep weight of the regression loss: 'uniform' (DDPM's L_simple) or 'min_snr' (Min-SNR-gamma, Hang et al.
  # 2023: min(SNR, gamma) in x0 space, for objectives eps, x0 and v; the paper's gamma is 5).
  c.diffusion.loss_weighting = 'uniform'
  c.diffusion.min_snr_gamma = 5.0

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0
  c.optim.decay_steps = 0         # > 0: the learning rate decays (optim.decay) over the steps from 0; 0: constant
  c.optim.decay = 'linear'        # 'linear' / 'cosine': to 0 at decay_steps; 'inverse_sqrt': / sqrt(step / decay_steps)
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 1.0         # global norm; 0 disables
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = False      # decay min(ema_decay, (1 + step) / (10 + step))
  # EDM2's power-function EMAs (ema.py): the widths sigma_rel tracked beside the EMA above, e.g. (0.05, 0.1), and
  # snapshot every train.ema_snapshot_every steps; sampling rebuilds any other width from them (sample.ema_sigma_rel).
  c.optim.ema_sigma_rels = ()

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 400_000
  c.train.batch_size = 256        # global, across all devices and hosts
  # Microbatches per update (gradient accumulation): the same update as one batch of batch_size, with the activations
  # of batch_size / grad_accum_steps examples at a time; must divide each device's share of the batch.
  c.train.grad_accum_steps = 1
  c.train.compute_dtype = 'float32'
  c.train.remat = False           # recompute each block's activations in the backward pass, keeping less memory
  c.train.remat_policy = 'full'   # what a remat block keeps: 'full' its input only; 'dots' also its dense outputs
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.keep_checkpoints = 3
  c.train.sample_every = 10_000   # PNG grid of EMA samples; 0 disables
  c.train.sample_grid = 64         # images in each grid; 0 disables grids
  c.train.profile_steps = 0       # a jax.profiler trace of this many steps after the first call, in tensorboard/
  c.train.ema_snapshot_every = 0  # power-function EMA snapshots (optim.ema_sigma_rels) in ema_snapshots/, kept
  c.train.nonfinite = 'stop'      # 'stop': error naming the step; 'skip': drop the update, count it
  # Steps per jitted call (a scan over k stacked batches, one host round trip): the same updates as k calls; helps
  # when steps are short (docs/performance.md), but not for conv nets on CPU (XLA:CPU runs them ~20x slower in a
  # scan). Must divide num_steps, log_every, checkpoint_every, sample_every (if grids are on) and
  # evals.<name>.every_steps; a checkpoint at a step not a multiple of k resumes with a short call.
  c.train.steps_per_call = 1

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = 'ddim'
  c.sample.num_steps = 50
  c.sample.guidance_scale = 1.0   # 1 = plain conditional sampling
  c.sample.eta = 0.0
  c.sample.spacing = 'leading'
  c.sample.ddpm_variance = 'posterior'
  c.sample.clip_denoised = True
  c.sample.guidance_interval = ()  # (lo, hi) network times where guidance applies; () = everywhere
  c.sample.guidance_channels = 0   # guide only the first k channels of the prediction (DiT's sampler: 3); 0 = all
  c.sample.karras_rho = 7.0       # 'heun'/'euler' on VP objectives, 'dpm++2m' with spacing 'karras': Karras levels
  c.sample.karras_sigma_max = 0.0  # ... starting there (EDM: 80); 0 = the schedule's largest (cosine: ~2e4)
  # EDM Algorithm 2 for 'heun'/'euler' on VP objectives: S_churn > 0 adds noise of std S_noise sqrt(sigma_hat^2 -
  # sigma^2) before each step at levels in [S_tmin, S_tmax], raising sigma by min(S_churn / N, sqrt 2 - 1) of itself
  # (EDM's ImageNet-64: 40, 0.05, 50, 1.003). 0 = deterministic (Algorithm 1).
  c.sample.s_churn = 0.0
  c.sample.s_tmin = 0.0
  c.sample.s_tmax = float('inf')
  c.sample.s_noise = 1.0
  c.sample.flow_shift = 1.0       # flow samplers: t -> shift t / (1 + (shift - 1) t); 1 = uniform
  c.sample.num_samples = 1000
  c.sample.batch_size = 250
  c.sample.seed = 1
  c.sample.use_ema = True
  c.sample.ema_sigma_rel = 0.0    # > 0: the power-function EMA of this width rebuilt from the snapshots (ema.py)
  c.sample.ema_step = 0           # ... at this snapshot step; 0 = the newest
  # Classifier guidance (ADM; diffusion/classifier_guidance.py): the workdir of a noisy classifier (model
  # 'adm_classifier', trained or imported there) whose gradient scale * d log p(y | x_t) / d x_t steers sampling.
  c.sample.classifier_workdir = ''  # '' = none
  c.sample.classifier_scale = 1.0
  # Super-resolution models (model.low_res_size > 0): the .npz of a base model's samples to upsample (arr_0 uint8
  # images of low_res_size pixels, arr_1 labels); '' = the dataset's first images, area-downsampled.
  c.sample.low_res_samples = ''
  c.sample.output = 'samples.npz'  # relative to the workdir

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # -1: all devices not used by the other axis
  c.mesh.fsdp = 1
  c.mesh.min_shard_size = 2 ** 14  # parameters smaller than this stay replicated under fsdp

  # Held-out loss (validation.py): the training loss of fixed, noised held-out examples, for params and EMA.
  c.val = ml_collections.ConfigDict()
  c.val.every_steps = 0           # and at step 0 and the end; 0: none
  c.val.split = ''                # data.source='tfds': the held-out split, e.g. 'validation'
  c.val.path = ''                 # image_folder / latents: the held-out directory
  c.val.num_examples = 1000
  c.val.batch_size = 250          # global; a multiple of the device count

  c.evals = ml_collections.ConfigDict()  # name -> ConfigDict(every_steps=..., num_samples=...)

  c.text = ml_collections.ConfigDict()  # text conditioning (models/text_encoder.py); needs data.captions
  c.text.encoder = ''             # '' none; 'small' trainable text transformer; 'clip' pretrained CLIP text tower
  c.text.width = 128              # 'small' tower: width, depth, heads, MLP ratio
  c.text.depth = 2
  c.text.num_heads = 4
  c.text.mlp_ratio = 4.0
  c.text.clip_weights = ''        # 'clip': python -m evaluation.clip_convert --text_only --out=... (.msgpack)
  c.text.train_clip = False       # 'clip': fine-tune the tower instead of freezing it
  c.text.use_labels = False       # also condition on class labels 'y'
  c.text.prompt_template = '{}'   # evaluation prompt of class y: template.format(class name)
  c.text.class_names = ()         # () = digit names for data.source='digits', else the label number
  c.text.eval_prompts = ()        # explicit prompts for grids and evaluators (cycled), instead of class prompts

  c.weights = ml_collections.ConfigDict()  # how --mode=import reads a public checkpoint (import_weights.py)
  # guided-diffusion U-Nets (models/adm_convert.py): the channel order of the fused qkv projection. 'legacy':
  # [head][q, k, v][channel] (QKVAttentionLegacy, its default); 'new': [q, k, v][head][channel]
  # (use_new_attention_order=True: the released 64x64 ImageNet model). The shapes are the same either way.
  c.weights.qkv_order = 'legacy'
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


def _validate_text_and_latents(config):
  _choice(config, 'text.encoder', TEXT_ENCODERS)
  _choice(config, 'data.tokenizer', TOKENIZERS)
  _choice(config, 'data.vae_config', VAE_CONFIGS)
  _choice(config, 'encode.dtype', LATENT_DTYPES)
  _choice(config, 'encode.compute_dtype', COMPUTE_DTYPES)
  for path in ('data.latent_scale', 'encode.batch_size', 'encode.shard_size', 'encode.num_workers',
               'text.width', 'text.depth', 'text.num_heads', 'text.mlp_ratio'):
    _positive(config, path)
  if config.data.max_tokens < 2:
    raise ValueError(f'config.data.max_tokens={config.data.max_tokens} must be >= 2 (start and end tokens)')
  needs_tokens = config.data.captions or config.text.encoder
  if config.data.tokenizer == 'clip_bpe' and needs_tokens and not config.data.vocab_path:
    raise ValueError("config.data.tokenizer='clip_bpe' needs config.data.vocab_path (bpe_simple_vocab_16e6.txt.gz "
                     'from the open_clip_torch wheel; see evaluation/clip_tokenizer.py)')
  if config.text.encoder:
    if not config.data.captions:
      raise ValueError(f'config.text.encoder={config.text.encoder!r} trains on captions; set '
                       '--config.data.captions=True')
    if config.text.width % config.text.num_heads:
      raise ValueError(f'config.text.width={config.text.width} is not divisible by text.num_heads='
                       f'{config.text.num_heads}')
    if config.text.encoder == 'clip' and (config.data.tokenizer != 'clip_bpe' or not config.text.clip_weights):
      raise ValueError("config.text.encoder='clip' needs config.data.tokenizer='clip_bpe' and "
                       'config.text.clip_weights (python -m evaluation.clip_convert --text_only ...)')
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
  """A run's config.json (train.write_config) laid over the current defaults, validated: a workdir written before
  a field existed loads with that field's default."""
  with open(path) as f:
    stored = ml_collections.ConfigDict(json.load(f))
  config = base_config()
  config.update(stored)
  return validate_config(config)


def validate_config(config):
  """Raises ValueError naming the first invalid field; returns the config otherwise."""
  from models import MODELS  # a registry lookup; imported here so configs stay light
  _choice(config, 'model.name', tuple(MODELS))
  _choice(config, 'data.source', DATA_SOURCES)
  _choice(config, 'diffusion.schedule', SCHEDULES)
  _choice(config, 'diffusion.objective', OBJECTIVES)
  _choice(config, 'diffusion.flow_time_sampling', FLOW_TIME_SAMPLING)
  _choice(config, 'sample.sampler', SAMPLERS)
  _choice(config, 'diffusion.preconditioning', PRECONDITIONINGS)
  _choice(config, 'diffusion.loss_weighting', LOSS_WEIGHTINGS)
  _choice(config, 'optim.decay', LR_DECAYS)
  _choice(config, 'sample.spacing', SPACINGS)
  _choice(config, 'sample.ddpm_variance', DDPM_VARIANCES)
  _choice(config, 'train.compute_dtype', COMPUTE_DTYPES)
  _choice(config, 'train.nonfinite', NONFINITE_POLICIES)
  _choice(config, 'train.remat_policy', REMAT_POLICIES)
  _choice(config, 'weights.qkv_order', QKV_ORDERS)
  for path in ('data.image_size', 'data.channels', 'diffusion.num_timesteps', 'train.num_steps',
               'train.batch_size', 'train.log_every', 'train.keep_checkpoints', 'sample.num_steps',
               'sample.num_samples', 'sample.batch_size', 'train.checkpoint_every', 'diffusion.sigma_data',
               'sample.karras_rho', 'sample.flow_shift', 'train.steps_per_call', 'train.grad_accum_steps',
               'data.num_workers', 'val.num_examples', 'val.batch_size', 'sample.s_noise'):
    _positive(config, path)
  for path in ('data.num_classes', 'optim.warmup_steps', 'optim.decay_steps', 'optim.weight_decay', 'optim.grad_clip',
               'train.sample_every', 'train.sample_grid', 'train.profile_steps', 'mesh.min_shard_size', 'sample.eta',
               'data.prefetch', 'sample.karras_sigma_max', 'val.every_steps', 'sample.s_churn', 'sample.s_tmin'):
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
  if config.sample.get('s_churn', 0.0) and (flow or config.sample.sampler not in flow_samplers):
    raise ValueError(f'config.sample.s_churn={config.sample.s_churn} (EDM stochastic sampling) applies to samplers '
                     f"'heun' and 'euler' on VP objectives (eps, x0, v), not {config.sample.sampler!r} with objective "
                     f"{config.diffusion.objective!r}; set it to 0 or choose sampler heun")
  if not config.sample.get('s_tmin', 0.0) < config.sample.get('s_tmax', float('inf')):
    raise ValueError(f'config.sample.s_tmin={config.sample.s_tmin} must be below config.sample.s_tmax='
                     f'{config.sample.s_tmax} (the noise levels where S_churn applies)')
  uses_karras = config.sample.sampler in flow_samplers or config.sample.spacing == 'karras'
  if config.sample.get('karras_sigma_max', 0.0) and not flow and uses_karras:
    from diffusion.karras import schedule_karras_sigmas
    from diffusion.schedules import alphas_cumprod_for
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
  _validate_classifier(config)
  _validate_super_res(config)
  for axis in ('data', 'fsdp'):
    if config.mesh[axis] == 0 or config.mesh[axis] < -1:
      raise ValueError(f'config.mesh.{axis}={config.mesh[axis]} must be a positive size or -1')
  for name, ev in config.evals.items():
    from evaluation import check_eval_config
    check_eval_config(name, ev)
  from validation import check_val_config
  check_val_config(config)
  from ema import check_ema_config
  check_ema_config(config)
  _validate_steps_per_call(config)
  return config


def _validate_model_shape(config):
  """The image side fits the model: whole DiT patches, and a U-Net's halvings (one per channel_mult level but the
  last) leave whole pixels for its skip connections."""
  from models import MODELS
  size, name = config.data.image_size, config.model.name
  field = lambda key: config.model.get(key, getattr(MODELS[name], key))  # the config's, else the model's default
  if name == 'dit' and size % field('patch_size'):
    raise ValueError(f'config.data.image_size={size} is not a multiple of config.model.patch_size='
                     f'{field("patch_size")}: DiT cuts the image into whole patches')
  if name in ('unet', 'adm_classifier'):
    levels = len(field('channel_mult'))
    if size % 2 ** (levels - 1):
      raise ValueError(f'config.data.image_size={size} is not a multiple of {2 ** (levels - 1)}: '
                       f'config.model.channel_mult={tuple(field("channel_mult"))} halves the image {levels - 1} times')


def _validate_classifier(config):
  """A classifier config trains on labels and draws no samples; classifier guidance needs a VP objective."""
  from models.conditioning import is_classifier
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
  if config.diffusion.objective == 'flow' or config.diffusion.preconditioning != 'none':
    raise ValueError(f'config.model.name={config.model.name!r} reads images noised by the discrete VP schedule as '
                     "they are: set config.diffusion.objective='eps' (not 'flow') and preconditioning='none'")
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
