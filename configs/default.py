"""Every field a config has, with its one-line comment: data only.

Each experiment file's `get_config(arg)` starts from `base_config()` and changes what it needs; the command line
overrides any field (`--config.train.batch_size=64`). configs/validate.py checks the result before anything starts.
"""
import ml_collections


def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = 'digits'  # one of DATA_SOURCES
  c.data.name = ''  # TFDS dataset name (source=tfds), e.g. 'imagenet2012' or 'coco_captions/2014'
  c.data.tfds_data_dir = ''  # where TFDS datasets (also data.pixels') were prepared; '' = $TFDS_DATA_DIR or
  # ~/tensorflow_datasets
  c.data.split = 'train'
  c.data.path = ''  # image folder or latent directory
  c.data.image_size = 8  # side length the model sees (pixels, or latent side)
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False
  c.data.random_crop = False  # ADM's classifier augmentation: a crop of 80-100% of the short side (decoded sources)
  c.data.num_workers = 8  # threads decoding and resizing images (image_folder, tfds)
  c.data.prefetch = 2  # host batches (chunks of train.steps_per_call steps) prepared ahead by a thread
  # Captions (text-to-image): batches also carry 'tokens' int32 [B, max_tokens] (input_pipeline/captions.py).
  c.data.captions = False
  c.data.tokenizer = 'words'  # 'words': word list at vocab_path ('' = digit caption words); 'clip_bpe': CLIP BPE
  c.data.vocab_path = ''  # word list, or bpe_simple_vocab_16e6.txt.gz for 'clip_bpe'
  c.data.max_tokens = 77  # token sequence length (CLIP's context)
  # Latents (source='latents', input_pipeline/latents.py): written by --mode=encode from data.pixels.
  c.data.latent_scale = 0.18215  # latents = scale * VAE posterior mean; checked against the stored value
  c.data.vae_weights = ''  # SD-VAE: converted .msgpack or diffusers .safetensors (models/vae_convert.py)
  c.data.vae_config = 'sd'  # one of VAE_CONFIGS
  c.data.pixels = ml_collections.ConfigDict()  # the image dataset --mode=encode encodes into data.path
  c.data.pixels.source = ''  # digits, image_folder or tfds
  c.data.pixels.name = ''
  c.data.pixels.split = 'train'
  c.data.pixels.path = ''
  c.data.pixels.image_size = 256  # pixels; the latent side data.image_size = image_size / 8 for the SD VAE
  c.data.pixels.channels = 3

  c.encode = ml_collections.ConfigDict()  # --mode=encode (jobs/encode.py)
  c.encode.batch_size = 256  # images per device step (global, a multiple of the local device count)
  c.encode.shard_size = 8192  # images per shard file: the unit of resumption
  c.encode.flips = True  # also store the latent of each horizontally flipped image
  c.encode.dtype = 'float16'  # stored latent dtype, one of LATENT_DTYPES
  c.encode.compute_dtype = 'float32'
  c.encode.num_workers = 8  # threads decoding images

  c.model = ml_collections.ConfigDict()
  c.model.name = 'unet'  # key of models.MODELS

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.objective = 'eps'  # what the network predicts; 'flow' = rectified flow velocity; 'transport' = SiT
  c.diffusion.schedule = 'linear'
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.flow_time_sampling = 'uniform'
  c.diffusion.label_dropout = 0.1  # probability a label is replaced by the null class
  c.diffusion.preconditioning = 'none'  # 'edm': Karras et al. 2022 c_skip/c_out/c_in; needs objective 'x0'
  c.diffusion.sigma_data = 0.5  # EDM's data standard deviation (preconditioning='edm')
  c.diffusion.learn_sigma = False  # Improved DDPM learned variances + hybrid loss (ADM, DiT); DDPM samples with them
  # Per-timestep weight of the regression loss: 'uniform' (DDPM's L_simple) or 'min_snr' (Min-SNR-gamma, Hang et al.
  # 2023: min(SNR, gamma) in x0 space, for objectives eps, x0 and v; the paper's gamma is 5).
  c.diffusion.loss_weighting = 'uniform'
  c.diffusion.min_snr_gamma = 5.0
  # SiT's transports (objective 'transport', docs/transports.md): x_t = alpha_t data + sigma_t noise, data at SiT time
  # t = 1; the network sees t * 1000, times drawn per diffusion.flow_time_sampling.
  c.diffusion.path = 'linear'  # 'linear' (t, 1 - t), 'gvp' (sin, cos), 'vp' (beta 0.1 to 20)
  c.diffusion.prediction = 'velocity'  # what a transport network predicts: 'velocity', 'score' or 'noise'
  c.diffusion.transport_loss_weight = 'none'  # score/noise predictions' loss weight: 'none', 'velocity', 'likelihood'
  c.diffusion.train_eps = 0.0  # training times in [eps, 1 - eps] as SiT's check_interval; 0 = SiT's default
  c.diffusion.sample_eps = 0.0  # the same margin for sampling; 0 = SiT's default (vp, score, noise: 1e-3)
  c.diffusion.cosine_loss_weight = 0.0  # LightningDiT's 1 - cos(output, velocity) over channels; 0 = off (it uses 1)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0
  c.optim.decay_steps = 0  # > 0: the learning rate decays (optim.decay) over the steps from 0; 0: constant
  c.optim.decay = 'linear'  # 'linear' / 'cosine': to 0 at decay_steps; 'inverse_sqrt': / sqrt(step / decay_steps)
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 1.0  # global norm; 0 disables
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = False  # decay min(ema_decay, (1 + step) / (10 + step))
  # EDM2's power-function EMAs (training/ema.py): the widths sigma_rel tracked beside the EMA above, e.g. (0.05, 0.1), and
  # snapshot every train.ema_snapshot_every steps; sampling rebuilds any other width from them (sample.ema_sigma_rel).
  c.optim.ema_sigma_rels = ()

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 400_000
  c.train.batch_size = 256  # global, across all devices and hosts
  # Microbatches per update (gradient accumulation): the same update as one batch of batch_size, with the activations
  # of batch_size / grad_accum_steps examples at a time; must divide each device's share of the batch.
  c.train.grad_accum_steps = 1
  c.train.compute_dtype = 'float32'
  c.train.remat = False  # recompute each block's activations in the backward pass, keeping less memory
  c.train.remat_policy = 'full'  # what a remat block keeps: 'full' its input only; 'dots' also its dense outputs
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.keep_checkpoints = 3
  c.train.sample_every = 10_000  # PNG grid of EMA samples; 0 disables
  c.train.sample_grid = 64  # images in each grid; 0 disables grids
  c.train.profile_steps = 0  # a jax.profiler trace of this many steps after the first call, in tensorboard/
  c.train.ema_snapshot_every = 0  # power-function EMA snapshots (optim.ema_sigma_rels) in ema_snapshots/, kept
  c.train.nonfinite = 'stop'  # 'stop': error naming the step; 'skip': drop the update, count it
  # Steps per jitted call (a scan over k stacked batches, one host round trip): the same updates as k calls; helps
  # when steps are short (docs/performance.md), but not for conv nets on CPU (XLA:CPU runs them ~20x slower in a
  # scan). Must divide num_steps, log_every, checkpoint_every, sample_every (if grids are on) and
  # evals.<name>.every_steps; a checkpoint at a step not a multiple of k resumes with a short call.
  c.train.steps_per_call = 1

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = 'ddim'
  c.sample.num_steps = 50
  c.sample.guidance_scale = 1.0  # 1 = plain conditional sampling
  c.sample.eta = 0.0
  c.sample.spacing = 'leading'
  c.sample.ddpm_variance = 'posterior'
  c.sample.clip_denoised = True
  c.sample.guidance_interval = ()  # (lo, hi) network times where guidance applies; () = everywhere
  c.sample.guidance_channels = 0  # guide only the first k channels of the prediction (DiT's sampler: 3); 0 = all
  c.sample.karras_rho = 7.0  # 'heun'/'euler' on VP objectives, 'dpm++2m' with spacing 'karras': Karras levels
  c.sample.karras_sigma_max = 0.0  # ... starting there (EDM: 80); 0 = the schedule's largest (cosine: ~2e4)
  # EDM Algorithm 2 for 'heun'/'euler' on VP objectives: S_churn > 0 adds noise of std S_noise sqrt(sigma_hat^2 -
  # sigma^2) before each step at levels in [S_tmin, S_tmax], raising sigma by min(S_churn / N, sqrt 2 - 1) of itself
  # (EDM's ImageNet-64: 40, 0.05, 50, 1.003). 0 = deterministic (Algorithm 1).
  c.sample.s_churn = 0.0
  c.sample.s_tmin = 0.0
  c.sample.s_tmax = float('inf')
  c.sample.s_noise = 1.0
  c.sample.flow_shift = 1.0  # flow, ode_euler/ode_heun: times moved to the noise, shift t / (1 + (shift - 1) t) on
  # flow time (noise at 1); 1 = uniform; LightningDiT's timestep_shift s is 1 / s here
  # Objective 'transport' samplers: 'ode_euler', 'ode_heun', 'ode_dopri5', 'sde_euler', 'sde_heun' (SiT: sde_euler,
  # 250 steps; ODE dopri5). Fixed-step ones take num_steps - 1 steps over SiT's grid of num_steps times.
  c.sample.diffusion_form = 'sigma'  # SDE w_t: constant, sbdm, sigma, linear, decreasing, increasing-decreasing
  c.sample.diffusion_norm = 1.0  # the scale of w_t
  c.sample.last_step = 'mean'  # SDE last step: 'none', 'mean' (with w_t s), 'tweedie' (E[data | x]), 'euler' (ODE)
  c.sample.last_step_size = 0.04  # its size: the SDE stops at 1 - last_step_size
  c.sample.atol = 1e-6  # ode_dopri5 absolute tolerance
  c.sample.rtol = 1e-3  # ode_dopri5 relative tolerance
  c.sample.max_adaptive_steps = 1000  # ode_dopri5 tries at most this many steps; a solve that needs more gives NaN
  c.sample.num_samples = 1000
  c.sample.batch_size = 250
  c.sample.seed = 1
  c.sample.use_ema = True
  c.sample.ema_sigma_rel = 0.0  # > 0: the power-function EMA of this width rebuilt from the snapshots (training/ema.py)
  c.sample.ema_step = 0  # ... at this snapshot step; 0 = the newest
  # Classifier guidance (ADM; diffusion/classifier_guidance.py): the workdir of a noisy classifier (model
  # 'adm_classifier', trained or imported there) whose gradient scale * d log p(y | x_t) / d x_t steers sampling.
  c.sample.classifier_workdir = ''  # '' = none
  c.sample.classifier_scale = 1.0
  # Autoguidance (Karras et al., 2024; jobs/guided.py): a weaker model of the same data, parameterisation and
  # conditions (smaller, or less trained) guides this one: D = D_weak(c) + w (D(c) - D_weak(c)). With classifier-free
  # guidance too (scale s): D = D(c) + (s - 1) (D(c) - D(null)) + (w - 1) (D(c) - D_weak(c)), both in the interval.
  c.sample.guide_workdir = ''  # the guiding model's workdir (its config.json and checkpoints); '' = no autoguidance
  c.sample.guide_step = 0  # its checkpoint of this step; 0 = the newest
  c.sample.guide_use_ema = True  # its EMA parameters; False: its raw params
  c.sample.autoguidance_scale = 2.0  # w; 1 = this model alone (the guide still runs)
  # Super-resolution models (model.low_res_size > 0): the .npz of a base model's samples to upsample (arr_0 uint8
  # images of low_res_size pixels, arr_1 labels); '' = the dataset's first images, area-downsampled.
  c.sample.low_res_samples = ''
  c.sample.output = 'samples.npz'  # relative to the workdir

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = -1  # -1: every device; N: the first N of a single process (the evaluators still use all)
  c.mesh.data = -1  # -1: all devices of the mesh not used by the other axis
  c.mesh.fsdp = 1
  c.mesh.min_shard_size = 2**14  # parameters smaller than this stay replicated under fsdp

  # Held-out loss (training/heldout.py): the training loss of fixed, noised held-out examples, for params and EMA.
  c.val = ml_collections.ConfigDict()
  c.val.every_steps = 0  # and at step 0 and the end; 0: none
  c.val.split = ''  # data.source='tfds': the held-out split, e.g. 'validation'
  c.val.path = ''  # image_folder / latents: the held-out directory
  c.val.num_examples = 1000
  c.val.batch_size = 250  # global; a multiple of the device count

  c.evals = ml_collections.ConfigDict()  # name -> ConfigDict(every_steps=..., num_samples=...)

  c.text = ml_collections.ConfigDict()  # text conditioning (models/text_encoder.py); needs data.captions
  c.text.encoder = ''  # '' none; 'small' trainable text transformer; 'clip' pretrained CLIP text tower
  c.text.width = 128  # 'small' tower: width, depth, heads, MLP ratio
  c.text.depth = 2
  c.text.num_heads = 4
  c.text.mlp_ratio = 4.0
  c.text.vocab_size = 0  # the tokenizer's vocabulary; 0 = read from it at start (configs/validate.py)
  c.text.clip_weights = ''  # 'clip': python -m models.clip_convert --text_only --out=... (.msgpack)
  c.text.train_clip = False  # 'clip': fine-tune the tower instead of freezing it
  c.text.use_labels = False  # also condition on class labels 'y'
  c.text.prompt_template = '{}'  # evaluation prompt of class y: template.format(class name)
  c.text.class_names = ()  # () = digit names for data.source='digits', else the label number
  c.text.eval_prompts = ()  # explicit prompts for grids and evaluators (cycled), instead of class prompts

  # REPA (Yu et al. 2025; training/repa.py, docs/repa.md): the DiT's token states after block repa.depth, through a
  # projector, are aligned with a frozen encoder's patch tokens of the clean image (pixel datasets).
  c.repa = ml_collections.ConfigDict()
  c.repa.encoder = ''  # '' off; 'dinov2_vit{s,b,l,g}14' (+ '_reg'), or 'digits' (configs/digits_encoder.py)
  c.repa.encoder_weights = ''  # DINOv2: its converted .msgpack (models/dinov2.py); 'digits': the encoder's workdir
  c.repa.encoder_resolution = 224  # DINOv2's input side: its patch-14 token grid must be the DiT's token grid
  c.repa.encoder_dim = 0  # the encoder's token width (the projector's output); 0 = filled in by configs/validate.py
  c.repa.depth = 8  # the DiT block (1-based) whose output is projected; REPA: 8 of SiT-XL's 28
  c.repa.projector_dim = 2048  # hidden width of the projector, a 3-layer SiLU MLP
  c.repa.weight = 0.5  # weight of the REPA loss added to the diffusion loss (REPA's proj_coeff)
  c.repa.stop_step = 0  # from this train step on the weight is 0; 0 = never

  c.weights = ml_collections.ConfigDict()  # how --mode=import reads a public checkpoint (jobs/import_weights.py)
  # guided-diffusion U-Nets (models/adm_convert.py): the channel order of the fused qkv projection. 'legacy':
  # [head][q, k, v][channel] (QKVAttentionLegacy, its default); 'new': [q, k, v][head][channel]
  # (use_new_attention_order=True: the released 64x64 ImageNet model). The shapes are the same either way.
  c.weights.qkv_order = 'legacy'
  return c
