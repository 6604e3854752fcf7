"""SiT's transports (diffusion/transport.py, transport_samplers.py): goldens from SiT's own transport/ code, the
exact-velocity check for every sampler, guidance on transport predictions, LightningDiT's cosine loss.

SIT holds what willisma/SiT at commit 947f95bd3a510e9af441d38c1e9f72e0eee873c5 (transport/, run on CPU with torch 2.13
and torchdiffeq 0.2.5) printed for t = T, DATA, NOISE and the model x (1 - t / 2) + t / 10 (SiT time t): path
coefficients (compute_alpha_t, compute_sigma_t, compute_d_alpha_alpha_ratio_t as 'rate', compute_drift), diffusion
forms at norm 0.7 (SiT spells 'inccreasing-decreasing'), training_losses per example with Transport.sample fixed to
(T, NOISE, DATA), get_drift and get_score at x = DATA, and Sampler.sample_sde (num_steps 3, last_step_size 0.04,
torch.randn returning W_i = sin(1.3 (i + 1) arange(12)) for draw i), sample_ode with 'euler' and 'heun2' (num_steps 5)
and 'dopri5' (SiT's atol 1e-6, rtol 1e-3, and 1e-10 in float64 as 'tight'), all from x = NOISE.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import base_config
from diffusion.objectives import FLOW_TIME_SCALE, mse_per_example
from diffusion.samplers import run_sampler
from diffusion.transport import (Transport, alpha_rate, cosine_loss, default_eps, drift_variance, interpolate,
                                 noise_from_output, path_coefficients, score_from_output, target_and_weight,
                                 time_interval, transport_batch, velocity_from_output)
from diffusion.transport_samplers import (DIFFUSION_FORMS, diffusion_coefficient, dopri5_integrate, last_step_update,
                                          sde_drift, sde_sample, sde_step)

T = np.array([0.1, 0.3, 0.5, 0.9], np.float32)
DATA = np.sin(np.arange(12, dtype=np.float32)).reshape(4, 3)
NOISE = np.cos(0.7 * np.arange(12, dtype=np.float32)).reshape(4, 3)
SIT_NAMES = {'linear': 'Linear', 'gvp': 'GVP', 'vp': 'VP'}
SIT_FORMS = {'sbdm': 'SBDM', 'increasing-decreasing': 'inccreasing-decreasing'}

SIT = {
    'linear alpha': [0.1, 0.3, 0.5, 0.9],
    'linear d_alpha': [1., 1., 1., 1.],
    'linear sigma': [0.9, 0.7, 0.5, 0.1],
    'linear d_sigma': [-1., -1., -1., -1.],
    'linear rate': [10., 3.3333333, 2., 1.1111112],
    'linear drift_var': [8.999999, 2.3333333, 1., 0.1111111],
    'linear drift_mean_coef': [-10., -3.3333333, -2., -1.1111112],
    'linear diffusion constant norm 0.7': [0.7],
    'linear diffusion SBDM norm 0.7': [6.2999992, 1.6333332, 0.7, 0.0777778],
    'linear diffusion sigma norm 0.7': [0.63, 0.49, 0.35, 0.07],
    'linear diffusion linear norm 0.7': [0.63, 0.49, 0.35, 0.07],
    'linear diffusion decreasing norm 0.7': [0.6936721, 0.4980475, 0.25, 0.0279325],
    'linear diffusion inccreasing-decreasing norm 0.7': [0.0668441, 0.458156, 0.7, 0.0668441],
    'gvp alpha': [0.1564345, 0.4539905, 0.7071068, 0.9876884],
    'gvp d_alpha': [1.5514573, 1.3995898, 1.1107208, 0.2457267],
    'gvp sigma': [0.9876884, 0.8910065, 0.7071068, 0.1564345],
    'gvp d_sigma': [-0.2457267, -0.7131267, -1.1107208, -1.5514573],
    'gvp rate': [9.9176178, 3.0828609, 1.5707964, 0.2487897],
    'gvp drift_var': [9.9176188, 3.0828612, 1.5707963, 0.2487897],
    'gvp drift_mean_coef': [-9.9176178, -3.0828609, -1.5707964, -0.2487897],
    'gvp diffusion constant norm 0.7': [0.7],
    'gvp diffusion SBDM norm 0.7': [6.9423332, 2.1580029, 1.0995574, 0.1741528],
    'gvp diffusion sigma norm 0.7': [0.6913819, 0.6237046, 0.4949747, 0.1095041],
    'gvp diffusion linear norm 0.7': [0.63, 0.49, 0.35, 0.07],
    'gvp diffusion decreasing norm 0.7': [0.6936721, 0.4980475, 0.25, 0.0279325],
    'gvp diffusion inccreasing-decreasing norm 0.7': [0.0668441, 0.458156, 0.7, 0.0668441],
    'vp alpha': [0.0169965, 0.0843526, 0.2811829, 0.9467218],
    'vp d_alpha': [0.1530532, 0.5917333, 1.4129441, 0.9893245],
    'vp sigma': [0.9998556, 0.996436, 0.9596542, 0.3220526],
    'vp d_sigma': [-2.6017383e-03, -5.0092757e-02, -4.1399881e-01, -2.9082675e+00],
    'vp rate': [9.0050001, 7.0149999, 5.0250001, 1.0450002],
    'vp drift_var': [9.0050001, 7.0149999, 5.0250001, 1.0450002],
    'vp drift_mean_coef': [-9.0050001, -7.0149999, -5.0250001, -1.0450002],
    'vp diffusion constant norm 0.7': [0.7],
    'vp diffusion SBDM norm 0.7': [6.3035002, 4.9105, 3.5174999, 0.7315001],
    'vp diffusion sigma norm 0.7': [0.6998989, 0.6975052, 0.6717579, 0.2254368],
    'vp diffusion linear norm 0.7': [0.63, 0.49, 0.35, 0.07],
    'vp diffusion decreasing norm 0.7': [0.6936721, 0.4980475, 0.25, 0.0279325],
    'vp diffusion inccreasing-decreasing norm 0.7': [0.0668441, 0.458156, 0.7, 0.0668441],
    'loss Linear velocity None': [1.3903599, 0.7209151, 0.1536449, 0.9320149],
    'loss Linear score None': [1.7901778, 1.5756165, 0.5961681, 0.5438108],
    'loss Linear score velocity': [179.0177612, 17.5068493, 2.3846724, 0.6713715],
    'loss Linear score likelihood': [19.8908672, 7.5029354, 2.3846724, 6.0423412],
    'loss Linear noise None': [0.0079369, 0.049358, 0.0332356, 0.5070782],
    'loss Linear noise velocity': [0.7936926, 0.5484222, 0.1329425, 0.6260225],
    'loss Linear noise likelihood': [0.0881881, 0.2350381, 0.1329425, 5.634201],
    'plan Linear xt': [
        0.9, 0.772505, 0.2439002, -0.3110562, -0.8865964, -0.943197, -0.3848382, 0.4217495, 0.882462, 0.4708925,
        -0.4142288, -0.8846537
    ],
    'plan Linear ut': [
        -1., 0.0766287, 0.7393302, 0.6459661, 0.1854199, -0.0224676, 0.2108455, 0.4704741, 0.2137924, -0.5877401,
        -1.2979233, -1.1533643
    ],
    'drift Linear score': [
        0.09, 15.6992855, 16.9574661, 0.820288, -3.9536667, -5.0282807, -0.7183926, 1.8567131, 2.7707353, 0.4930945,
        -0.6277137, -1.1622108
    ],
    'score Linear score': [
        0.01, 0.8093974, 0.8738325, 0.149952, -0.6132821, -0.7850857, -0.1595616, 0.5427399, 0.7920187, 0.3166652,
        -0.2092116, -0.4599946
    ],
    'drift Linear noise': [
        -0.1, 0.3207359, 0.3546495, -0.02944, -0.4784014, -0.5794618, -0.2397077, 0.2284933, 0.3946791, 0.1060593,
        -0.3720106, -0.5999951
    ],
    'score Linear noise': [
        -0.0111111, -0.8993305, -0.970925, -0.2142172, 0.8761173, 1.121551, 0.3191232, -1.0854799, -1.5840374,
        -3.166651, 2.0921156, 4.5999455
    ],
    'drift Linear velocity': [
        0.01, 0.8093974, 0.8738325, 0.149952, -0.6132821, -0.7850857, -0.1595616, 0.5427399, 0.7920187, 0.3166652,
        -0.2092116, -0.4599946
    ],
    'score Linear velocity': [
        1.1111113e-03, -8.4503472e-01, -9.1323799e-01, -1.3733485e-01, 8.1831127e-01, 1.0334265e+00, 3.9926934e-01,
        -7.7123326e-01, -1.1866977e+00, -1.2711980e+00, 3.5573061e+00, 5.8599496e+00
    ],
    'loss GVP velocity None': [0.8762376, 0.4061716, 0.3039458, 1.5919056],
    'loss GVP score None': [2.1849427, 2.4589813, 1.0038419, 0.5571837],
    'loss GVP score velocity': [220.3002319, 29.4375286, 4.9537616, 1.4092832],
    'loss GVP score likelihood': [22.2130184, 9.54877, 3.1536624, 5.6645551],
    'loss GVP noise None': [0.0095075, 0.0188915, 0.0527778, 0.5041068],
    'loss GVP noise velocity': [0.9586124, 0.2261586, 0.260448, 1.275036],
    'loss GVP noise likelihood': [0.0966575, 0.07336, 0.1658064, 5.1249542],
    'plan GVP xt': [
        0.9876884, 0.8870608, 0.31012, -0.385754, -1.1831075, -1.2697316, -0.5442435, 0.5964439, 1.2479898, 0.563457,
        -0.419387, -0.9636857
    ],
    'plan GVP ut': [
        -0.2457267, 1.1175641, 1.3689706, 0.5575293, -0.3872891, -0.6742883, 0.2341904, 0.5225654, 0.2374638,
        -1.4499694, -1.3033277, -0.4836776
    ],
    'drift GVP score': [
        0.0991762, 16.3726826, 17.6844025, 0.8973346, -4.2237802, -5.3765402, -0.6895436, 1.884526, 2.7981803,
        0.1813139, -0.1873966, -0.3632292
    ],
    'score GVP score': [
        0.01, 0.8093974, 0.8738325, 0.149952, -0.6132821, -0.7850857, -0.1595616, 0.5427399, 0.7920187, 0.3166652,
        -0.2092116, -0.4599946
    ],
    'drift GVP noise': [
        -0.1004124, 0.2180319, 0.2437, -0.083777, -0.2111754, -0.2398527, -0.084448, -0.1736727, -0.2053427, -0.401086,
        0.1973784, 0.4827774
    ],
    'score GVP noise': [
        -0.0101247, -0.8194866, -0.8847249, -0.1682951, 0.6883026, 0.8811222, 0.2256542, -0.7675502, -1.1200836,
        -2.024267, 1.3373753, 2.9404938
    ],
    'drift GVP velocity': [
        0.01, 0.8093974, 0.8738325, 0.149952, -0.6132821, -0.7850857, -0.1595616, 0.5427399, 0.7920187, 0.3166652,
        -0.2092116, -0.4599946
    ],
    'score GVP velocity': [
        0.0010083, -0.7598588, -0.8211883, -0.0924795, 0.5578697, 0.7042629, 0.1778354, -0.3114677, -0.4851435,
        0.860704, -0.2968962, -0.8489391
    ],
    'loss VP velocity None': [0.4390217, 0.1736828, 0.1251834, 5.6968045],
    'loss VP score None': [2.0873237, 2.3378639, 1.1265092, 0.6247604],
    'loss VP score velocity': [169.3100281, 115.871254, 30.8871155, 6.5779819],
    'loss VP score likelihood': [18.8017788, 16.5176411, 6.1466899, 6.2947192],
    'loss VP noise None': [0.0006967, 0.0130299, 0.0122606, 0.4135445],
    'loss VP noise velocity': [0.0565095, 0.6457998, 0.3361675, 4.3541303],
    'loss VP noise likelihood': [0.0062754, 0.0920599, 0.066899, 4.1666312],
    'plan VP xt': [
        0.9998556, 0.7790338, 0.1853975, -0.4911429, -1.0027025, -1.0140069, -0.5490478, 0.3637209, 1.0224655,
        0.7121686, -0.2722405, -0.8973181
    ],
    'plan VP ut': [
        -2.6017383e-03, 1.2679988e-01, 1.3872863e-01, 1.0879453e-01, -4.0062672e-01, -5.2051771e-01, -1.9183099e-01,
        8.5106933e-01, 1.0768245e+00, -2.5001373e+00, -2.7307630e+00, -1.4353676e+00
    ],
    'drift VP score': [
        0.09005, 14.8660698, 16.057085, 2.0418701, -9.6111431, -12.23423, -2.2058601, 6.028626, 8.9514198, 0.761579,
        -0.7871284, -1.5256845
    ],
    'score VP score': [
        0.01, 0.8093974, 0.8738325, 0.149952, -0.6132821, -0.7850857, -0.1595616, 0.5427399, 0.7920187, 0.3166652,
        -0.2092116, -0.4599946
    ],
    'drift VP noise': [
        -0.090063, 0.2877698, 0.318224, -0.0657189, -0.9914079, -1.1997795, -0.5685565, 0.4594295, 0.8243079,
        -0.5968552, 0.1103503, 0.4476064
    ],
    'score VP noise': [
        -0.0100014, -0.8095143, -0.8739588, -0.1504883, 0.6154757, 0.7878937, 0.1662699, -0.5655578, -0.8253168,
        -0.9832717, 0.6496195, 1.4283216
    ],
    'drift VP velocity': [
        0.01, 0.8093974, 0.8738325, 0.149952, -0.6132821, -0.7850857, -0.1595616, 0.5427399, 0.7920187, 0.3166652,
        -0.2092116, -0.4599946
    ],
    'score VP velocity': [
        0.0011105, -0.7515879, -0.8122588, -0.1197441, 0.6693781, 0.847009, 0.2476619, -0.5489787, -0.8317426,
        -0.1090897, 0.3438187, 0.5598041
    ],
    'sde Linear velocity Euler sigma Mean': [
        1.1023698, 2.2188499, 0.1330168, -0.5025805, -2.4612861, -0.4310001, 0.6355875, 0.1434564, 0.6606953,
        -0.3875317, 1.8171961, 1.0036546
    ],
    'sde Linear velocity Heun sigma Mean': [
        1.1542464, 2.2876296, 0.1612047, -0.4390318, -2.4464562, -0.3790106, 0.6870819, 0.1774639, 0.7293072,
        -0.3643942, 1.8888383, 1.0483636
    ],
    'sde GVP noise Euler SBDM Mean': [
        -58.588707, -40.5781631, -9.1569824, 27.9741917, 50.635273, 55.9413605, 32.450531, -10.5372944, -47.4993248,
        -62.6386147, -41.7032776, -5.7325888
    ],
    'sde GVP noise Heun SBDM Mean': [
        -14.9956121, -455.0045471, -240.6366272, 324.7915955, 420.3110352, -85.0210495, -452.7009888, -150.2470093,
        370.2171021, 335.3768921, -204.3996124, -457.1153564
    ],
    'sde VP score Euler SBDM Tweedie': [
        115.2551346, 111.6837463, 29.7044163, -71.4459763, -130.4489288, -101.5143585, -32.7848511, 27.6993904,
        72.4108963, 95.3523254, 98.4166718, 39.9883919
    ],
    'sde VP score Heun linear Euler': [
        137.9319611, 237.0262604, 90.517067, -158.650528, -250.8051453, -98.1226425, 67.8586426, 67.1838608, -1.6330839,
        32.1865387, 163.0552216, 153.4796906
    ],
    'sde Linear velocity Euler sigma Tweedie': [
        1.1205984, 2.2594266, 0.1318423, -0.5164775, -2.5143895, -0.4434643, 0.6444728, 0.1424909, 0.6700831,
        -0.3991258, 1.8497331, 1.0199072
    ],
    'sde Linear velocity Euler sigma Euler': [
        1.1205984, 2.2594266, 0.1318423, -0.5164775, -2.5143898, -0.4434643, 0.6444728, 0.1424909, 0.670083, -0.3991258,
        1.8497332, 1.0199072
    ],
    'sde Linear velocity Euler sigma None': [
        1.1, 2.23844, 0.1411135, -0.5235735, -2.4876435, -0.4318173, 0.6537437, 0.1470301, 0.6387309, -0.4076125,
        1.8241589, 1.0226746
    ],
    'sde Linear score Euler decreasing Mean': [
        2495.9658203, 1911.7900391, 425.1972046, -1261.0517578, -2354.1469727, -2336.2834473, -1220.838623, 466.1418762,
        1934.2163086, 2493.1379395, 1883.2362061, 385.2893372
    ],
    'ode Linear velocity euler 5': [
        2.1335359, 1.6416441, 0.3973137, -1.0142276, -1.9291101, -1.9170496, -0.9837192, 0.4319223, 1.6640754, 2.13324,
        1.6187605, 0.362605
    ],
    'ode Linear velocity heun2 5': [
        2.1683042, 1.6727459, 0.4191401, -1.0029231, -1.9246252, -1.9124751, -0.9721873, 0.4540067, 1.6953444,
        2.1680064, 1.6496918, 0.3841727
    ],
    'ode GVP noise heun2 5': [
        0.7922658, 0.5826229, 0.0522965, -0.5492955, -0.939214, -0.9340746, -0.5362911, 0.0670484, 0.5921853, 0.7921472,
        0.5728661, 0.0375062
    ],
    'ode VP score euler 5': [
        176.6781921, 135.2438354, 30.4279366, -88.472908, -165.5378265, -164.5219116, -85.9030457, 33.3431931,
        137.133316, 176.6532745, 133.3162231, 27.5042648
    ],
    'dopri5 Linear velocity': [
        2.1794617, 1.6816369, 0.4222896, -1.0062855, -1.9322075, -1.9199995, -0.9754096, 0.4573157, 1.7043382,
        2.1791658, 1.6584759, 0.3871623
    ],
    'dopri5 tight Linear velocity': [
        2.1794712, 1.6816422, 0.4222917, -1.0062879, -1.9322136, -1.9200076, -0.9754114, 0.4573181, 1.704344, 2.1791719,
        1.6584823, 0.387164
    ],
    'dopri5 VP score': [
        10002.7226562, 7657.0073242, 1723.0943604, -5008.2006836, -9371.0615234, -9313.5400391, -4862.7207031,
        1888.1397705, 7763.980957, 10001.3076172, 7547.8769531, 1557.5814209
    ],
    'dopri5 tight VP score': [
        10006.8030911, 7660.1334719, 1723.7992931, -5010.2478361, -9374.8820367, -9317.3456141, -4864.7017785,
        1888.9070624, 7767.1455555, 10005.3922199, 7550.9622556, 1558.2144924
    ],
    'dopri5 GVP noise': [
        0.796847, 0.5859335, 0.0523867, -0.5528585, -0.9451432, -0.9399717, -0.5397768, 0.0672263, 0.5955501, 0.7967193,
        0.5761221, 0.0375044
    ],
    'dopri5 tight GVP noise': [
        0.7960237, 0.5853066, 0.0522587, -0.5524191, -0.9443375, -0.9391711, -0.5393499, 0.0670844, 0.5949156, 0.795897,
        0.5755036, 0.0373902
    ],
}


def sit_model(x, t_network):
  """SiT's golden model x (1 - t / 2) + t / 10 at SiT time t = t_network / FLOW_TIME_SCALE."""
  t = (t_network / FLOW_TIME_SCALE).reshape((-1,) + (1,) * (x.ndim - 1))
  return x * (1 - 0.5 * t) + 0.1 * t


def transport(path, prediction):
  return Transport(path, prediction, *default_eps(path, prediction))


def close(actual, name, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.ravel(actual), SIT[name], rtol=rtol, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Paths, targets, weights, conversions


@pytest.mark.parametrize('path', ['linear', 'gvp', 'vp'])
def test_path_coefficients_and_diffusion_forms_match_sit(path):
  for name, value in zip(('alpha', 'd_alpha', 'sigma', 'd_sigma'), path_coefficients(path, jnp.asarray(T))):
    close(value, f'{path} {name}')
  close(alpha_rate(path, jnp.asarray(T)), f'{path} rate')
  close(drift_variance(path, jnp.asarray(T)), f'{path} drift_var')
  for form in DIFFUSION_FORMS:
    value = np.broadcast_to(diffusion_coefficient(transport(path, 'velocity'), form, 0.7, jnp.asarray(T)), T.shape)
    expected = SIT[f'{path} diffusion {SIT_FORMS.get(form, form)} norm 0.7']
    np.testing.assert_allclose(value, np.broadcast_to(expected, T.shape), rtol=1e-5, err_msg=form)


@pytest.mark.parametrize('path', ['linear', 'gvp', 'vp'])
def test_training_targets_and_loss_weights_match_sit(path):
  name = SIT_NAMES[path]
  x_t, u_t = interpolate(path, jnp.asarray(T), DATA, NOISE)
  close(x_t, f'plan {name} xt')
  close(u_t, f'plan {name} ut')
  for prediction, weights in (('velocity', ['none']), ('score', ['none', 'velocity', 'likelihood']),
                              ('noise', ['none', 'velocity', 'likelihood'])):
    for loss_weight in weights:
      target, weight = target_and_weight(transport(path, prediction), loss_weight, jnp.asarray(T), DATA, NOISE)
      loss = weight * mse_per_example(sit_model(x_t, T * FLOW_TIME_SCALE), target)
      close(loss, f'loss {name} {prediction} {None if loss_weight == "none" else loss_weight}', rtol=2e-5)


@pytest.mark.parametrize('path', ['linear', 'gvp', 'vp'])
@pytest.mark.parametrize('prediction', ['velocity', 'score', 'noise'])
def test_velocity_and_score_of_each_prediction_match_sit(path, prediction):
  spec, output = transport(path, prediction), sit_model(DATA, T * FLOW_TIME_SCALE)
  close(velocity_from_output(spec, output, DATA, jnp.asarray(T)), f'drift {SIT_NAMES[path]} {prediction}', rtol=2e-5)
  close(score_from_output(spec, output, DATA, jnp.asarray(T)), f'score {SIT_NAMES[path]} {prediction}', rtol=2e-5)


def test_noise_of_a_velocity_is_sits_get_noise_from_velocity():
  """SiT's ICPlan.get_noise_from_velocity: (v alpha / alpha' - x) / (sigma' alpha / alpha' - sigma)."""
  for path in ('linear', 'gvp', 'vp'):
    v = sit_model(DATA, T * FLOW_TIME_SCALE)
    alpha, d_alpha, sigma, d_sigma = (c[:, None] for c in path_coefficients(path, jnp.asarray(T)))
    expected = (alpha / d_alpha * v - DATA) / (alpha / d_alpha * d_sigma - sigma)
    np.testing.assert_allclose(noise_from_output(transport(path, 'velocity'), v, DATA, jnp.asarray(T)), expected,
                               rtol=1e-4, atol=1e-6)


def test_time_intervals_are_sits_check_interval():
  assert time_interval(transport('linear', 'velocity')) == (0.0, 1.0)
  assert time_interval(transport('linear', 'velocity'), sampling=False) == (0.0, 1.0)
  assert time_interval(transport('gvp', 'noise'), sampling=False) == (1e-3, 1 - 1e-3)
  assert time_interval(transport('vp', 'velocity'), sampling=False) == (0.0, 1 - 1e-5)
  assert time_interval(transport('vp', 'score')) == (0.0, 1 - 1e-3)
  assert time_interval(transport('linear', 'velocity'), sde=True, last_step_size=0.04) == (0.0, 0.96)
  assert time_interval(Transport('linear', 'velocity', 0.0, 1e-3), sde=True, sbdm=True) == (1e-3, 1 - 1e-3)
  assert time_interval(transport('vp', 'noise'), sde=True, last_step_size=0.04) == (0.0, 0.96)


def test_training_batch_draws_times_in_the_interval_and_scales_them():
  c = base_config().diffusion
  c.update(objective='transport', path='linear', prediction='noise', flow_time_sampling='logit_normal')
  data = jnp.asarray(np.tile(DATA, (64, 1)))
  x_t, t_network, target, weight = transport_batch(jax.random.PRNGKey(0), data, c)
  t = t_network / FLOW_TIME_SCALE
  assert float(t.min()) >= 1e-3 and float(t.max()) <= 1 - 1e-3 and 0.4 < float(jnp.median(t)) < 0.6
  noise = (x_t - t[:, None] * data) / (1 - t[:, None])
  np.testing.assert_allclose(target, noise, rtol=1e-3, atol=1e-3)
  np.testing.assert_array_equal(weight, 1.0)


def test_cosine_loss_matches_lightningdit():
  """hustvl/LightningDiT commit 2725fed42a14898744433809949834e26957bcdd, transport/transport.py: cos_loss =
  mean_flat(1 - cosine_similarity(output, u_t, dim=1)) on NCHW; torch 2.13 gives these for the tensors below."""
  output = np.sin(0.9 * np.arange(24, dtype=np.float32)).reshape(2, 3, 2, 2).transpose(0, 2, 3, 1)
  target = np.cos(0.4 * np.arange(24, dtype=np.float32)).reshape(2, 3, 2, 2).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(cosine_loss(output, target), [0.8609122, 1.0926644], rtol=1e-5)
  np.testing.assert_allclose(cosine_loss(target, 3 * target), 0.0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Samplers against SiT

SDE_CASES = [('linear', 'velocity', 1, 'sigma', 'mean'), ('linear', 'velocity', 2, 'sigma', 'mean'),
             ('gvp', 'noise', 1, 'sbdm', 'mean'), ('gvp', 'noise', 2, 'sbdm', 'mean'),
             ('vp', 'score', 1, 'sbdm', 'tweedie'), ('vp', 'score', 2, 'linear', 'euler'),
             ('linear', 'velocity', 1, 'sigma', 'tweedie'), ('linear', 'velocity', 1, 'sigma', 'euler'),
             ('linear', 'velocity', 1, 'sigma', 'none'), ('linear', 'score', 1, 'decreasing', 'mean')]


def sit_draw(i):
  return np.sin(1.3 * (i + 1) * np.arange(12, dtype=np.float32)).reshape(4, 3)


@pytest.mark.parametrize('path,prediction,order,form,last_step', SDE_CASES)
def test_sde_steps_and_last_steps_match_sit(path, prediction, order, form, last_step):
  """Two steps over SiT's grid linspace(t0, t1, 3) with SiT's draws, then the last step of size 0.04."""
  spec = transport(path, prediction)
  size = 0.0 if last_step == 'none' else 0.04
  t0, t1 = time_interval(spec, sde=True, sbdm=form == 'sbdm', last_step_size=size)
  times = np.linspace(t0, t1, 3, dtype=np.float32)
  drift = sde_drift(spec, sit_model, form, 1.0)
  x = jnp.asarray(NOISE)
  for i in range(2):
    x = sde_step(drift, lambda t: diffusion_coefficient(spec, form, 1.0, t), x, times[i], times[1] - times[0],
                 sit_draw(i), order)
  x = last_step_update(spec, sit_model, x, t1, last_step, size, form, 1.0)
  method = {1: 'Euler', 2: 'Heun'}[order]
  sit_last = {'none': None, 'mean': 'Mean', 'tweedie': 'Tweedie', 'euler': 'Euler'}[last_step]
  close(x, f'sde {SIT_NAMES[path]} {prediction} {method} {SIT_FORMS.get(form, form)} {sit_last}', rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('order', [1, 2])
def test_sde_sample_is_the_loop_of_steps_with_draw_i_from_fold_in(order):
  spec, rng = transport('gvp', 'velocity'), jax.random.PRNGKey(3)
  x = sde_sample(spec, sit_model, jnp.asarray(NOISE), rng, 4, order=order, form='sigma', norm=0.5, last_step='mean',
                 last_step_size=0.04)
  times = np.linspace(0.0, 0.96, 4, dtype=np.float32)
  drift, expected = sde_drift(spec, sit_model, 'sigma', 0.5), jnp.asarray(NOISE)
  for i in range(3):
    w = jax.random.normal(jax.random.fold_in(rng, i), NOISE.shape)
    expected = sde_step(drift, lambda t: diffusion_coefficient(spec, 'sigma', 0.5, t), expected, times[i],
                        times[1] - times[0], w, order)
  expected = last_step_update(spec, sit_model, expected, 0.96, 'mean', 0.04, 'sigma', 0.5)
  np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


def transport_config(sampler, num_steps=5, **overrides):
  c = base_config().sample
  c.update(sampler=sampler, num_steps=num_steps, **overrides)
  return c


@pytest.mark.parametrize('path,prediction,sampler,sit_method', [('linear', 'velocity', 'ode_euler', 'euler'),
                                                                ('linear', 'velocity', 'ode_heun', 'heun2'),
                                                                ('gvp', 'noise', 'ode_heun', 'heun2'),
                                                                ('vp', 'score', 'ode_euler', 'euler')])
def test_fixed_step_odes_match_sit(path, prediction, sampler, sit_method):
  x = run_sampler(transport_config(sampler), 'transport', None, sit_model, jnp.asarray(NOISE), None,
                  transport=transport(path, prediction))
  close(x, f'ode {SIT_NAMES[path]} {prediction} {sit_method} 5', rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('path,prediction', [('linear', 'velocity'), ('vp', 'score'), ('gvp', 'noise')])
def test_dopri5_reaches_sits_solution_within_its_tolerance(path, prediction):
  x = run_sampler(transport_config('ode_dopri5'), 'transport', None, sit_model, jnp.asarray(NOISE), None,
                  transport=transport(path, prediction))
  tight = np.asarray(SIT[f'dopri5 tight {SIT_NAMES[path]} {prediction}'])
  sit = np.asarray(SIT[f'dopri5 {SIT_NAMES[path]} {prediction}'])
  scale = 1e-3 * np.abs(tight).max()  # rtol times the solution's size: the error scale the step control aims at
  assert np.abs(sit - tight).max() < 1.5 * scale  # SiT's own answer
  assert np.abs(np.ravel(x) - tight).max() < 1.5 * scale, np.abs(np.ravel(x) - tight).max() / scale


def test_dopri5_tightens_with_rtol_and_stops_at_max_steps():
  velocity = lambda x, t: -x * (1 + t)  # x(1) = x(0) exp(-1.5)
  x0 = jnp.asarray(NOISE)
  errors = []
  for rtol in (1e-3, 1e-6):
    x, steps = dopri5_integrate(velocity, x0, 0.0, 1.0, atol=1e-9, rtol=rtol)
    errors.append(float(jnp.max(jnp.abs(x - x0 * np.exp(-1.5)))))
    assert int(steps) < 100
  assert errors[0] < 1e-3 and errors[1] < 1e-5 and errors[1] < errors[0] / 10, errors
  x, steps = dopri5_integrate(velocity, x0, 0.0, 1.0, atol=1e-9, rtol=1e-6, max_steps=2)
  assert int(steps) == 2 and np.all(np.isnan(x))
