"""Convert diffusers AutoencoderKL checkpoints (e.g. stabilityai/sd-vae-ft-mse) to Flax params.

The Flax module in `models/vae.py` names its submodules after the diffusers
state-dict keys, so the mapping is mechanical:

    encoder.down_blocks.0.resnets.1.conv1.weight  (O, I, kH, kW)
 -> params/encoder/down_blocks_0/resnets_1/conv1/kernel  (kH, kW, I, O)

Linear weights (O, I) become Dense kernels (I, O); GroupNorm ``weight`` becomes
``scale``. Older checkpoints name the mid-block attention ``query``/``key``/
``value``/``proj_attn`` instead of ``to_q``/``to_k``/``to_v``/``to_out.0``; both
are accepted. Every key and shape is checked against the model built from the
config; any mismatch fails with the offending names.

CLI:
    python -m models.vae_convert --weights=diffusion_pytorch_model.safetensors --out=sd_vae_ft_mse.msgpack
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Mapping

import numpy as np
import jax
import flax.serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from models import weight_files
from models.vae import SD_VAE_CONFIG, build_vae, vae_param_shapes

WEIGHTS_FILENAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_FILENAME_BIN = "diffusion_pytorch_model.bin"
HF_REPO = "stabilityai/sd-vae-ft-mse"
HF_URL = f"https://huggingface.co/{HF_REPO}/blob/main/{WEIGHTS_FILENAME}"

LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_ATTENTION_KEY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_INDEXED_NAME = re.compile(r"^(.*)_(\d+)$")


class CheckpointMismatchError(ValueError):
  """A state dict whose names or shapes do not fit the VAE config."""


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
  """('encoder', 'down_blocks_0', 'resnets_1', 'norm1', 'scale') -> 'encoder.down_blocks.0.resnets.1.norm1.weight'."""
  *modules, leaf = path
  parts = []
  for name in modules:
    match = _INDEXED_NAME.match(name)
    parts.append(f"{match.group(1)}.{match.group(2)}" if match else name)
  parts.append("bias" if leaf == "bias" else "weight")
  return ".".join(parts)


def torch_shape_from_flax(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax (kH, kW, I, O) conv or (I, O) dense kernel -> torch (O, I, kH, kW) or (O, I); 1-d unchanged."""
  if len(shape) == 4:
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)
  if len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def torch_to_flax_array(array: np.ndarray, flax_ndim: int) -> np.ndarray:
  """Transpose one torch tensor into the Flax layout (float32)."""
  array = np.asarray(array, dtype=np.float32)
  if flax_ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if flax_ndim == 2:
    if array.ndim == 4:  # a 1x1 conv stored where a linear layer is expected
      array = array[:, :, 0, 0]
    return np.ascontiguousarray(array.T)
  return array


def flax_to_torch_array(array: np.ndarray) -> np.ndarray:
  """Inverse of `torch_to_flax_array`."""
  array = np.asarray(array)
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return array


def expected_flax_shapes(config: Mapping[str, Any] = SD_VAE_CONFIG) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {flax path: shape} of the 'params' collection, without allocating."""
  shapes = vae_param_shapes(build_vae(config))["params"]
  return {path: tuple(leaf.shape) for path, leaf in flatten_dict(shapes).items()}


def expected_torch_shapes(config: Mapping[str, Any] = SD_VAE_CONFIG) -> dict[str, tuple[int, ...]]:
  """{diffusers key: torch shape} that a checkpoint for ``config`` must hold."""
  return {
      flax_path_to_torch_key(path): torch_shape_from_flax(shape) for path, shape in expected_flax_shapes(config).items()
  }


def rename_legacy_attention_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0 (older diffusers checkpoints)."""
  renamed = {}
  for key, value in state_dict.items():
    match = _LEGACY_ATTENTION_KEY.match(key)
    if match:
      prefix, old, leaf = match.groups()
      key = f"{prefix}.{LEGACY_ATTENTION_NAMES[old]}.{leaf}"
    if key in renamed:
      raise CheckpointMismatchError(f"Key {key!r} appears under both its old and new attention name")
    renamed[key] = value
  return renamed


def _as_expected(shape: tuple[int, ...], expected: tuple[int, ...] | None) -> tuple[int, ...]:
  """A 1x1 conv (O, I, 1, 1) standing in for a linear (O, I) counts as the linear's shape."""
  if expected is not None and len(expected) == 2 and shape == tuple(expected) + (1, 1):
    return tuple(expected)
  return shape


def check_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any] = SD_VAE_CONFIG) -> None:
  """Raise CheckpointMismatchError naming every missing, unexpected or misshaped key."""
  expected = expected_torch_shapes(config)
  got = {key: _as_expected(shape, expected.get(key)) for key, shape in weight_files.array_shapes(state_dict).items()}
  problems = weight_files.key_and_shape_problems(got, expected)
  if problems:
    raise CheckpointMismatchError(
        f"Checkpoint does not match the AutoencoderKL config {dict(config)} (diffusers key layout "
        f"expected, {len(expected)} tensors, as in {WEIGHTS_FILENAME} of {HF_REPO}): " + "; ".join(problems))


def convert_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any] = SD_VAE_CONFIG) -> dict:
  """diffusers AutoencoderKL state dict (name -> numpy array) -> Flax variables {'params': ...}, float32."""
  state_dict = rename_legacy_attention_keys(state_dict)
  check_state_dict(state_dict, config)
  flat = {}
  for path, shape in expected_flax_shapes(config).items():
    flat[path] = torch_to_flax_array(state_dict[flax_path_to_torch_key(path)], len(shape))
  return {"params": unflatten_dict(flat)}


def state_dict_from_params(variables: Mapping) -> dict[str, np.ndarray]:
  """Flax variables {'params': ...} -> diffusers-named numpy state dict (new attention naming)."""
  flat = flatten_dict(variables["params"])
  return {flax_path_to_torch_key(path): flax_to_torch_array(np.asarray(value)) for path, value in flat.items()}


def resolve_weights_path(path: str) -> str:
  """A checkpoint file, or a directory holding diffusers' weights file; fails with download help."""
  if os.path.isdir(path):
    for name in (WEIGHTS_FILENAME, WEIGHTS_FILENAME_BIN):
      candidate = os.path.join(path, name)
      if os.path.isfile(candidate):
        return candidate
    path = os.path.join(path, WEIGHTS_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"VAE weights not found at {path!r}. Expected the diffusers checkpoint {WEIGHTS_FILENAME} "
                            f"(or {WEIGHTS_FILENAME_BIN}) from the Hugging Face repo {HF_REPO} ({HF_URL}); "
                            f"sd-vae-ft-ema works too. Download it and pass its path, or convert it with "
                            f"`python -m models.vae_convert --weights=PATH --out=sd_vae_ft_mse.msgpack`.")
  return path


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A diffusers checkpoint (.safetensors, or .bin via torch) as {name: numpy array}."""
  return weight_files.read_state_dict(resolve_weights_path(path))


def save_params_msgpack(variables: Mapping, path: str) -> None:
  """Write Flax variables with flax.serialization (msgpack)."""
  numpy_tree = jax.tree.map(np.asarray, dict(variables))
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(numpy_tree))


def check_params(variables: Mapping, config: Mapping[str, Any] = SD_VAE_CONFIG) -> None:
  """Raise CheckpointMismatchError unless the params tree matches the model built from ``config``."""
  if "params" not in variables:
    raise CheckpointMismatchError(f"Expected a {{'params': ...}} tree, got top-level keys {sorted(variables)}")
  expected = {"/".join(p): s for p, s in expected_flax_shapes(config).items()}
  actual = {"/".join(p): tuple(np.shape(v)) for p, v in flatten_dict(variables["params"]).items()}
  problems = weight_files.key_and_shape_problems(actual, expected)
  if problems:
    raise CheckpointMismatchError(f"Params do not match the VAE config {dict(config)}: " + "; ".join(problems))


def load_msgpack_params(path: str, config: Mapping[str, Any] = SD_VAE_CONFIG) -> dict:
  """Converted Flax variables from a .msgpack file, checked against ``config``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Converted VAE params not found at {path!r}. Create them from {WEIGHTS_FILENAME} "
                            f"(Hugging Face repo {HF_REPO}, {HF_URL}) with "
                            f"`python -m models.vae_convert --weights=PATH --out={path}`.")
  with open(path, "rb") as f:
    variables = flax.serialization.msgpack_restore(f.read())
  check_params(variables, config)
  return variables


def load_vae_params(path: str, config: Mapping[str, Any] = SD_VAE_CONFIG) -> dict:
  """Flax variables from a converted .msgpack or directly from a diffusers checkpoint."""
  if path.endswith(".msgpack"):
    return load_msgpack_params(path, config)
  return convert_state_dict(read_state_dict(path), config)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--weights", required=True,
                      help=f"{WEIGHTS_FILENAME} (or .bin, or a directory holding it) from {HF_REPO}")
  parser.add_argument("--out", default="sd_vae_ft_mse.msgpack", help="output .msgpack path")
  args = parser.parse_args(argv)
  variables = convert_state_dict(read_state_dict(args.weights), SD_VAE_CONFIG)
  save_params_msgpack(variables, args.out)
  count = sum(np.size(x) for x in jax.tree.leaves(variables))
  print(f"Wrote {count:,} parameters to {args.out}")


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (FileNotFoundError, CheckpointMismatchError) as error:
    sys.exit(f"error: {error}")
