"""The 2024-25 paper configs: they validate and build the papers' models (parameter counts from shapes only)."""
import pytest

from configs import lightningdit_xl, sit_xl, sit_xl_repa
from configs.validate import validate_config
from models import build_model
from models.shapes import abstract_params
from training.state import count_params

# DiT-XL/2 has 674,834,720 trainable parameters (675,129,632 with DiT's fixed position table, which it counts):
# SiT drops the learned-variance half of the final layer, 1152 x 16 weights and 16 biases.
SIT_XL_2 = 674_834_720 - 1152 * 16 - 16
REPA_PROJECTOR = 8_131_328  # 1152 -> 2048 -> 2048 -> 768 with biases (REPA's build_mlp for DINOv2-B)
LIGHTNINGDIT_XL_2 = 675_183_104  # hustvl/LightningDiT@2725fed LightningDiT-XL/2, 32 latent channels (the
# reference count of tests/models/test_lightningdit.py), less 2 x 2 x (32 - 4) x 1152 patch-embedding and 2 x 2 x 28
# x 1152 + 112 final-layer weights for the SD-VAE's 4 channels
LIGHTNINGDIT_XL_2_SD_VAE = LIGHTNINGDIT_XL_2 - 4 * 28 * 1152 - 4 * 28 * 1152 - 4 * 28


@pytest.mark.parametrize('module,expected', [(sit_xl, SIT_XL_2), (sit_xl_repa, SIT_XL_2 + REPA_PROJECTOR),
                                             (lightningdit_xl, LIGHTNINGDIT_XL_2_SD_VAE)])
def test_paper_configs_validate_and_count_their_parameters(module, expected):
  config = module.get_config('2' if module is sit_xl else None)
  validate_config(config)
  assert count_params(abstract_params(config, build_model(config))) == expected
  assert abs(expected - 675e6) / 675e6 < 0.015  # each paper's "675M" (REPA adds its projector)


def test_paper_settings():
  sit, repa, lightning = sit_xl.get_config('2'), sit_xl_repa.get_config(), lightningdit_xl.get_config()
  validate_config(repa)  # fills in the encoder's width
  assert (sit.diffusion.objective, sit.diffusion.path, sit.diffusion.prediction) == ('transport', 'linear', 'velocity')
  assert (sit.sample.sampler, sit.sample.num_steps, sit.sample.diffusion_form,
          sit.sample.last_step) == ('sde_euler', 250, 'sigma', 'mean')
  assert (repa.repa.encoder, repa.repa.depth, repa.repa.weight, repa.repa.encoder_dim) == ('dinov2_vitb14', 8, 0.5, 768)
  assert tuple(repa.sample.guidance_interval) == (300.0, 1000.0) and repa.sample.guidance_scale == 1.8
  assert (lightning.model.mlp, lightning.model.norm, lightning.model.rope) == ('swiglu', 'rms', True)
  assert (lightning.optim.b2, lightning.diffusion.flow_time_sampling,
          lightning.diffusion.cosine_loss_weight) == (0.95, 'logit_normal', 1.0)
