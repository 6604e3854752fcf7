"""openai/guided-diffusion checkpoints (ADM) -> the params of this codebase's U-Net (models/unet.py) or noisy
classifier (models/adm_classifier.py), including the super-resolution models (ADM-U).

    python main.py --mode=import --config=configs/adm_imagenet.py:256 --workdir=runs/adm256 --weights=256x256_diffusion.pt
    python main.py --mode=import --config=configs/adm_classifier.py:256 --workdir=runs/adm256_classifier \
        --weights=256x256_classifier.pt

guided-diffusion's UNetModel is a list of blocks: input_blocks.0.0 is the first conv; then, level by level,
input_blocks.N holds a ResBlock (.0) and, at attention resolutions, an AttentionBlock (.1); between levels a
block holds the downsampling (.0: a ResBlock with down=True under resblock_updown, else Downsample, whose conv
is .0.op). middle_block.{0,1,2} are ResBlock, AttentionBlock, ResBlock. output_blocks.N hold a ResBlock (.0),
maybe an AttentionBlock (.1) and, after a level's last block, the upsampling (a ResBlock with up=True, or
Upsample with .conv) as the next index. Here each module maps onto ours:

  time_embed.0 / .2                      -> temb_0 / temb_1                  Linear [out, in] -> Dense kernel [in, out]
  label_emb.weight [classes, 4ch]        -> label_emb/embedding_table        + the null-label row ours has, zeros
  input_blocks.0.0, out.0, out.2         -> conv_in, norm_out, conv_out
  input_blocks / middle_block / output_blocks, in the order above
                                         -> down_L_res_I, down_L_attn_I, down_L_downsample, mid_res_0, mid_attn,
                                            mid_res_1, up_L_res_I, up_L_attn_I, up_L_upsample
  ResBlock in_layers.0 / .2, emb_layers.1, out_layers.0 / .3, skip_connection (1x1 conv)
                                         -> norm1 / conv1, emb_proj, norm2 / conv2, skip (Dense)
  AttentionBlock norm, qkv (conv1d [3C, C, 1]), proj_out (conv1d)
                                         -> norm, q / k / v (split by config.weights.qkv_order), proj_out (Dense)

Conv2d weights [O, I, kH, kW] become kernels [kH, kW, I, O]; GroupNorm weights become scales. The fused qkv
rows are ordered [head][q, k, v][channel] by QKVAttentionLegacy (the default, 'legacy') and [q, k, v][head]
[channel] with use_new_attention_order ('new', the 64x64 ImageNet model); our q, k, v are ordered [head]
[channel], so the split needs the layer's head count. Heads, the qkv order and the 32 GroupNorm groups leave
no trace in the shapes: the config gives them, and a released ImageNet model recognised by its shapes must get
its own (models/adm_variants.py). Every key and shape is checked against the model the config builds first.

The super-resolution model (SuperResModel) is a UNetModel whose input_blocks.0.0 reads 6 channels (the noisy
image, then the low-resolution one upsampled): our U-Net with low_res_size (configs/adm_upsampler.py).

The classifier (EncoderUNetModel) has the same time_embed, input_blocks and middle_block (no label_emb), then
out.0 (GroupNorm -> norm_out) and its head: out.2, an AttentionPool2d (positional_embedding [C, HW + 1] -> pool/
positional_embedding [HW + 1, C]; qkv_proj (conv1d [3C, C, 1], always in the 'new' [q, k, v][head][channel] order)
-> pool/q, k, v; c_proj (conv1d [classes, C, 1]) -> pool/c_proj), or for pool='adaptive' out.3 (a 1x1 conv
[classes, C, 1, 1]) -> out (Dense). The released classifiers' trunks use the legacy qkv order and 64 channels per
head (configs/adm_classifier.py).

ADM's class-conditional models have no null label (they were not trained with label dropout); the null row
that ours have is set to zeros, which makes the null condition the time embedding alone. It is there so the
tree fits; classifier-free guidance with it is not what ADM samples.
"""
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from models import build_model
from models.adm_variants import ARCHITECTURES, CLASSIFIER_HEAD_CHANNELS, QKV_ORDERS, UPSAMPLERS
from models.shapes import abstract_params
from models.weight_files import array_shapes, key_and_shape_problems

_URL = 'https://openaipublic.blob.core.windows.net/diffusion/jul-2021/'
WHERE_TO_GET = ('the guided-diffusion README, github.com/openai/guided-diffusion: '
                f'{_URL}64x64_diffusion.pt (configs/adm_imagenet.py:64), {_URL}128x128_diffusion.pt (:128), '
                f'{_URL}256x256_diffusion.pt (:256), {_URL}256x256_diffusion_uncond.pt (:256 with '
                f'--config.data.num_classes=0) and {_URL}512x512_diffusion.pt (:512); classifiers: '
                '64x64_classifier.pt (configs/adm_classifier.py:64), 128x128_classifier.pt (:128), '
                '256x256_classifier.pt (:256), 512x512_classifier.pt (:512); upsamplers: 64_256_upsampler.pt '
                '(configs/adm_upsampler.py:64_256), 128_512_upsampler.pt (:128_512)')

_RESBLOCK = {
    'norm1': 'in_layers.0', 'conv1': 'in_layers.2', 'emb_proj': 'emb_layers.1', 'norm2': 'out_layers.0',
    'conv2': 'out_layers.3', 'skip': 'skip_connection'
}
_ATTENTION = {'norm': 'norm', 'q': 'qkv', 'k': 'qkv', 'v': 'qkv', 'proj_out': 'proj_out'}
_INNER = _RESBLOCK | _ATTENTION | {'embedding_table': None}  # submodule -> its guided-diffusion name (None: none)
_POOL = {'q': 'qkv_proj', 'k': 'qkv_proj', 'v': 'qkv_proj', 'c_proj': 'c_proj'}  # the classifier's AttentionPool2d
_QKV = ('q', 'k', 'v')
_LEAF = {
    'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias',
    'positional_embedding': 'positional_embedding'
}
_LINEAR = ('temb_0', 'temb_1', 'emb_proj')  # the other Dense kernels are 1x1 convs there (conv1d in attention)
_CONV1D = ('proj_out', 'c_proj')
# (base channels, number of input blocks) of the released ImageNet models -> resolution (ARCHITECTURES)
_RELEASED = {(192, 16): 64, (256, 15): 128, (256, 18): 256, (256, 21): 512}
_RELEASED_CLASSIFIERS = {(128, 20): 64, (128, 15): 128, (128, 18): 256, (128, 21): 512}  # configs/adm_classifier.py
# (base channels, input blocks, attention layers) of the released upsamplers -> configs/adm_upsampler.py's argument
# (UPSAMPLERS)
_RELEASED_UPSAMPLERS = {(192, 18, 16): '64_256', (192, 18, 11): '128_512'}


def module_prefixes(model):
  """{our top-level module name: its guided-diffusion module}, in the order UNetModel builds its blocks."""
  prefixes = {
      'temb_0': 'time_embed.0', 'temb_1': 'time_embed.2', 'label_emb': 'label_emb', 'conv_in': 'input_blocks.0.0',
      'norm_out': 'out.0', 'conv_out': 'out.2', 'pool': 'out.2', 'out': 'out.3', 'mid_res_0': 'middle_block.0',
      'mid_attn': 'middle_block.1', 'mid_res_1': 'middle_block.2'
  }
  resampler = lambda block, conv: block if model.resblock_updown else f'{block}.{conv}'
  attends = lambda level: model.image_size // 2**level in model.attn_resolutions
  levels = len(model.channel_mult)
  index = 1
  for level in range(levels):
    for i in range(model.num_res_blocks):
      prefixes[f'down_{level}_res_{i}'] = f'input_blocks.{index}.0'
      if attends(level):
        prefixes[f'down_{level}_attn_{i}'] = f'input_blocks.{index}.1'
      index += 1
    if level != levels - 1:
      prefixes[f'down_{level}_downsample'] = resampler(f'input_blocks.{index}.0', 'op')
      index += 1
  index = 0
  for level in reversed(range(levels)):
    for i in range(model.num_res_blocks + 1):
      prefixes[f'up_{level}_res_{i}'] = f'output_blocks.{index}.0'
      if attends(level):
        prefixes[f'up_{level}_attn_{i}'] = f'output_blocks.{index}.1'
      index += 1
    if level:
      prefixes[f'up_{level}_upsample'] = resampler(f'output_blocks.{index - 1}.{2 if attends(level) else 1}', 'conv')
  return prefixes


def _torch_key(path, prefixes):
  """('down_1_attn_0', 'q', 'kernel') -> 'input_blocks.4.1.qkv.weight'."""
  top, *inner, leaf = path
  names = _POOL if top == 'pool' else _INNER
  parts = [prefixes[top]] + [names[name] for name in inner if names[name]]
  return '.'.join(parts + [_LEAF[leaf]])


def _torch_shape(path, shape):
  """The guided-diffusion shape of one of our params (for q/k/v: of the fused qkv)."""
  module, leaf = path[-2], path[-1]
  if leaf == 'embedding':
    return (shape[0] - 1, shape[1])  # no null-label row
  if leaf == 'positional_embedding':
    return (shape[1], shape[0])
  if module in _QKV:
    return (3 * shape[-1],) + ((shape[0], 1) if leaf == 'kernel' else ())
  if leaf != 'kernel':
    return tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if module in _LINEAR:
    return (shape[1], shape[0])
  return (shape[1], shape[0], 1) if module in _CONV1D else (shape[1], shape[0], 1, 1)  # conv1d / 1x1 conv2d


def _heads(model, channels):
  return channels // model.num_head_channels if model.num_head_channels > 0 else model.num_heads


def _to_flax(array, path, shape, model, qkv_order):
  """One guided-diffusion tensor (numpy) as our param `path` of `shape`, float32."""
  array = np.asarray(array, np.float32)
  module, leaf = path[-2], path[-1]
  if leaf == 'embedding':
    return np.concatenate([array, np.zeros((1, array.shape[1]), np.float32)])
  if leaf == 'positional_embedding':
    return np.ascontiguousarray(array.T)
  if path[0] == 'pool':
    qkv_order = 'new'  # AttentionPool2d's QKVAttention
  if module in _QKV:
    channels = shape[-1]
    rows = array.reshape(3 * channels, -1)  # [3C, C] weight or [3C, 1] bias
    which = _QKV.index(module)
    if qkv_order == 'legacy':
      heads = _heads(model, channels)
      part = rows.reshape(heads, 3, channels // heads, -1)[:, which].reshape(channels, -1)
    else:
      part = rows.reshape(3, channels, -1)[which]
    return np.ascontiguousarray(part.T if leaf == 'kernel' else part[:, 0])
  if leaf != 'kernel':
    return array
  if len(shape) == 4:
    return array.transpose(2, 3, 1, 0)
  return array.reshape(array.shape[0], array.shape[1]).T


def _model_and_abstract_params(config):
  model = build_model(config)
  if getattr(model, 'text', None) is not None:
    raise ValueError('the guided-diffusion U-Nets are class-conditional or unconditional; this config is '
                     f'text-conditional (config.text.encoder={config.text.encoder!r}); import into one without text')
  if model.num_groups != 32:
    raise ValueError(f'guided-diffusion normalises with 32 groups (nn.normalization); config.model.num_groups='
                     f'{model.num_groups} would give other activations with the same shapes; set it to 32')
  if not model.resblock_updown and len(model.channel_mult) > 1 and not model.symmetric_downsample:
    raise ValueError('guided-diffusion\'s Downsample conv pads one pixel on every side; with SAME padding '
                     '(config.model.symmetric_downsample=False) the weights would read shifted inputs; set '
                     '--config.model.symmetric_downsample=True')
  return model, abstract_params(config, model)


def _is_classifier(model):
  return hasattr(model, 'pool')  # models/adm_classifier.py


def _release(shapes):
  """The released ImageNet file a guided-diffusion layout ({key: shape}) is, by its shapes: (config file, its
  argument, a description), or None."""
  time_embed = shapes.get('time_embed.0.weight', ())
  base = time_embed[1] if len(time_embed) == 2 else None
  blocks = len({k.split('.')[1] for k in shapes if k.startswith('input_blocks.')})
  if _is_classifier_layout(shapes):
    resolution = _RELEASED_CLASSIFIERS.get((base, blocks))
    return resolution and ('configs/adm_classifier.py', str(resolution),
                           f"ADM's {resolution}x{resolution} ImageNet classifier")
  conv_in = shapes.get('input_blocks.0.0.weight', ())
  if len(conv_in) == 4 and conv_in[1] == 6:  # SuperResModel: the image and its upsampled low-resolution version
    name = _RELEASED_UPSAMPLERS.get((base, blocks, sum(k.endswith('.qkv.weight') for k in shapes)))
    return name and ('configs/adm_upsampler.py', name, "ADM's {} -> {} upsampler".format(*name.split('_')))
  resolution = _RELEASED.get((base, blocks))
  return resolution and ('configs/adm_imagenet.py', str(resolution), f"ADM's {resolution}x{resolution} ImageNet model")


def _is_classifier_layout(shapes):
  return not any(k.startswith('output_blocks.') for k in shapes)


def _likely_cause(shapes, expected, model):
  """What about the config disagrees with the file, and what to use instead ('' if nothing stands out)."""
  if any(k.startswith(('down_blocks.', 'conv_in.')) for k in shapes):
    return ('this is a diffusers UNet2DModel state dict, not guided-diffusion\'s layout; import the original file '
            f'from {WHERE_TO_GET}')
  classifier, release = _is_classifier(model), _release(shapes)
  if _is_classifier_layout(shapes) != classifier:
    what = ('a guided-diffusion UNetModel (a diffusion model)'
            if classifier else 'an ADM noisy classifier (EncoderUNetModel)')
    config = release[0] + ':' + release[1] if release else (
        'configs/adm_imagenet.py' if classifier else 'configs/adm_classifier.py')
    return f'the file is {what}, the config {"a classifier" if classifier else "a U-Net"}: use --config={config}'
  causes = []
  if release and release[:2] != (_release(expected) or ())[:2]:
    causes.append(f'the file is {release[2]}: --config={release[0]}:{release[1]}')
  if classifier:
    head = shapes.get('out.2.c_proj.weight', shapes.get('out.3.weight', ()))
    if head and head[0] != model.num_classes:
      causes.append(f'the file has {head[0]} classes, the config {model.num_classes}: '
                    f'--config.data.num_classes={head[0]}')
    pool = ('attention' if 'out.2.positional_embedding' in shapes else 'adaptive' if 'out.3.weight' in shapes else '')
    if pool and pool != model.pool:
      causes.append(f'the file pools by {pool}: --config.model.pool={pool}')
  else:
    classes = shapes['label_emb.weight'][0] if 'label_emb.weight' in shapes else 0
    if classes != model.num_classes:
      causes.append(f'the file has {classes} classes' +
                    (' (no label_emb.weight: unconditional)' if not classes else '') +
                    f', the config {model.num_classes}: --config.data.num_classes={classes}')
    out = shapes.get('out.2.weight', ())
    if out and out[0] == (model.channels if model.learn_sigma else 2 * model.channels):
      causes.append(f'the file has {out[0]} output channels ({"no " if model.learn_sigma else ""}learned variances): '
                    f'--config.diffusion.learn_sigma={not model.learn_sigma}')
    conv_in = shapes.get('input_blocks.0.0.weight', ())
    if len(conv_in) == 4 and conv_in[1] == 2 * model.channels and not model.low_res_size:
      causes.append(f'the file takes {conv_in[1]} input channels: a super-resolution model (SuperResModel), which '
                    'this config is not: use a config with model.low_res_size, such as configs/adm_upsampler.py')
    elif len(conv_in) == 4 and conv_in[1] == model.channels and model.low_res_size:
      causes.append(f'the file takes {conv_in[1]} input channels: not a super-resolution model: '
                    '--config.model.low_res_size=0')
  convs = any(k.endswith(('.op.weight', '.conv.weight')) for k in shapes)
  if len(model.channel_mult) > 1 and convs == model.resblock_updown:
    causes.append(f'the file resamples with {"convs" if convs else "residual blocks"}: '
                  f'--config.model.resblock_updown={not convs}')
  return '; '.join(causes)


def _released_attention(release):
  """(channels per head, heads per layer, qkv order) of a released file's attention blocks."""
  config_file, arg, _ = release
  if config_file == 'configs/adm_classifier.py':
    return CLASSIFIER_HEAD_CHANNELS, None, 'legacy'  # create_classifier: the default (legacy) QKVAttention
  if config_file == 'configs/adm_upsampler.py':  # sr_create_model: no use_new_attention_order
    arch = UPSAMPLERS[arg]
    return arch['num_head_channels'], arch['num_heads'], 'legacy'
  arch = ARCHITECTURES[int(arg)]
  return arch['num_head_channels'], arch['num_heads'], QKV_ORDERS[int(arg)]


def _check(state_dict, model, abstract, qkv_order):
  """Raises ValueError naming every missing, unexpected or misshaped key, and a head layout that is not the one
  of the released model the file is."""
  classifier = _is_classifier(model)
  prefixes = module_prefixes(model)
  expected = {_torch_key(p, prefixes): _torch_shape(p, leaf.shape) for p, leaf in flatten_dict(abstract).items()}
  shapes = array_shapes(state_dict)
  problems = key_and_shape_problems(shapes, expected)
  if problems:
    cause = _likely_cause(shapes, expected, model)
    what = (f'{model.pool} pool' if classifier else f'learn_sigma={model.learn_sigma}')
    raise ValueError(f'the weights do not fit the {"classifier" if classifier else "U-Net"} of this config '
                     f'({model.image_size}x{model.image_size}x{model.channels}, {model.base_channels} channels x '
                     f'{tuple(model.channel_mult)}, {model.num_res_blocks} blocks per level, {model.num_classes} '
                     f'classes, {what}; guided-diffusion key layout, {len(expected)} tensors): ' + '; '.join(problems) +
                     (f'. Likely cause: {cause}' if cause else ''))
  release = _release(shapes)
  if release:
    want, want_heads, want_order = _released_attention(release)
    heads_ok = (model.num_head_channels == want
                if want > 0 else model.num_head_channels <= 0 and model.num_heads == want_heads)
    if not heads_ok or qkv_order != want_order:
      heads = f'{want} channels per head' if want > 0 else f'{want_heads} heads per layer'
      raise ValueError(f'the file is {release[2]} (by its shapes), whose attention has {heads} and qkv order '
                       f'{want_order!r}; this config has num_head_channels={model.num_head_channels}, num_heads='
                       f'{model.num_heads}, weights.qkv_order={qkv_order!r}: the weights would load but attention '
                       f'would split them wrongly; use --config={release[0]}:{release[1]}')


def params_from_state_dict(state_dict, config):
  """A guided-diffusion UNetModel (or EncoderUNetModel, for a classifier config) state dict ({key: numpy array})
  -> the params tree of build_model(config), float32 numpy arrays. Raises ValueError if the file does not fit."""
  model, abstract = _model_and_abstract_params(config)
  qkv_order = config.weights.qkv_order
  _check(state_dict, model, abstract, qkv_order)
  prefixes = module_prefixes(model)
  return unflatten_dict({
      path: _to_flax(state_dict[_torch_key(path, prefixes)], path, leaf.shape, model, qkv_order)
      for path, leaf in flatten_dict(abstract).items()
  })
