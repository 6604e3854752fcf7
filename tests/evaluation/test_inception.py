"""FID Inception port: sizes, weight conversion, feature extraction, IS and precision/recall.

Inputs are 75x75 without the resize to 299 (the smallest size the network takes), so a forward
is milliseconds on CPU. Parity with PyTorch lives in tests/evaluation/test_inception_*parity.py.
"""
import math

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from evaluation import frechet, inception, inception_convert, inception_metrics
from input_pipeline.files import load_samples_npz

# torchvision's inception_v3 has 27,161,264 parameters (1000 classes, with the aux head of
# 98,560 + 2,459,136 + 769,000 = 3,326,696); without the aux head and with a 1008-way fc
# (+ 8 * 2048 + 8) that is the 23,850,960 of pt_inception-2015-12-05-6726825d.pth.
FID_INCEPTION_PARAMS = 27_161_264 - 3_326_696 + 8 * 2048 + 8
NUM_CONVS = 94  # each BasicConv2d holds 5 tensors: conv.weight, bn.weight/bias/running_mean/var
SMALL = inception.FIDInceptionV3(resize_input=False)


@pytest.fixture(scope='module')
def state_dict():
  return inception_convert.random_state_dict(seed=0)


@pytest.fixture(scope='module')
def variables(state_dict):
  return inception_convert.convert_state_dict(state_dict)


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).integers(0, 256, (5, 75, 75, 3), dtype=np.uint8)


def test_parameter_count_matches_the_real_weight_file():
  shapes = inception.variable_shapes()
  assert FID_INCEPTION_PARAMS == 23_850_960
  assert inception.count_params(shapes) == FID_INCEPTION_PARAMS
  torch_shapes = inception_convert.expected_state_dict_shapes()
  assert len(torch_shapes) == 5 * NUM_CONVS + 2
  trainable = sum(math.prod(s) for k, s in torch_shapes.items() if 'running' not in k)
  assert trainable == FID_INCEPTION_PARAMS


def test_known_shapes_in_torch_layout():
  shapes = inception_convert.expected_state_dict_shapes()
  assert shapes['Conv2d_1a_3x3.conv.weight'] == (32, 3, 3, 3)
  assert shapes['Mixed_5b.branch_pool.conv.weight'] == (32, 192, 1, 1)
  assert shapes['Mixed_6b.branch7x7_2.conv.weight'] == (128, 128, 1, 7)
  assert shapes['Mixed_6e.branch7x7dbl_2.conv.weight'] == (192, 192, 7, 1)
  assert shapes['Mixed_7a.branch3x3_2.conv.weight'] == (320, 192, 3, 3)
  assert shapes['Mixed_7c.branch3x3dbl_1.conv.weight'] == (448, 2048, 1, 1)
  assert shapes['Mixed_7c.branch_pool.bn.running_var'] == (192,)
  assert shapes['fc.weight'] == (1008, 2048)
  assert shapes['fc.bias'] == (1008,)
  assert not any(k.startswith('AuxLogits') for k in shapes)


def test_output_shapes_and_unbiased_logits(variables, images):
  outputs = jax.jit(SMALL.apply)(variables, images[:2])
  assert outputs.pool3.shape == (2, inception.POOL3_DIM)
  assert outputs.logits.shape == outputs.logits_unbiased.shape == (2, inception.NUM_CLASSES)
  bias = variables['params']['fc']['bias']
  np.testing.assert_allclose(outputs.logits - outputs.logits_unbiased, np.broadcast_to(bias, (2, 1008)), atol=1e-4)
  assert np.all(np.asarray(outputs.pool3) >= 0)  # average of ReLU outputs
  assert np.ptp(np.asarray(outputs.pool3), axis=0).max() > 1e-3  # images are told apart
  # sFID features: Mixed_6d's 1x1 branch is 3x3 at a 75x75 input (17x17 at 299), 7 of its channels kept
  assert outputs.spatial.shape == (2, 3 * 3 * inception.SPATIAL_CHANNELS)
  assert np.all(np.asarray(outputs.spatial) >= 0)  # ReLU outputs


@pytest.mark.parametrize('in_size', [8, 64, 256, 512, 299])
def test_both_resizes_map_a_ramp_to_their_source_coordinates(in_size):
  """Resizing the ramp x[i] = i gives each output pixel's source coordinate: (j + 0.5) in / out - 0.5 clipped to
  [0, in - 1] with half-pixel centres (torch, pytorch-fid), j in / out capped at in - 1 without (TF1, the 2015
  graph's ResizeBilinear); at 256 -> 299 the two differ by 0.43 pixels."""
  ramp = np.broadcast_to(np.arange(in_size, dtype=np.float32)[None, :, None, None], (1, in_size, 2, 1))
  j, scale = np.arange(299.0), in_size / 299
  half = np.asarray(inception.resize_bilinear(ramp, 299, 2))[0, :, 0, 0]
  legacy = np.asarray(inception.resize_bilinear(ramp, 299, 2, half_pixel_centers=False))[0, :, 0, 0]
  np.testing.assert_allclose(half, np.clip((j + 0.5) * scale - 0.5, 0, in_size - 1), atol=2e-4 * in_size)
  np.testing.assert_allclose(legacy, np.minimum(j * scale, in_size - 1), atol=2e-4 * in_size)


def test_tensorflow_resize_matches_tf1_resize_bilinear():
  tf = pytest.importorskip('tensorflow')
  images = (np.random.default_rng(0).random((2, 256, 200, 3)) * 255).astype(np.float32)
  expected = tf.compat.v1.image.resize_bilinear(images, (299, 299), half_pixel_centers=False).numpy()
  ours = np.asarray(inception.resize_bilinear(images, 299, 299, half_pixel_centers=False))
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)  # of 255 (measured 6.1e-5 with TF 2.21)


def test_tensorflow_preprocessing_scales_by_128(variables, images):
  """'tensorflow' feeds the network (x - 128) / 128, 'pytorch_fid' x / 127.5 - 1: equal outputs for inputs mapped
  onto each other, different ones for the same input."""
  tf_net = inception.FIDInceptionV3(resize_input=False, preprocessing='tensorflow')
  same = np.asarray(jax.jit(tf_net.apply)(variables, images[:2]).pool3)
  moved = (images[:2].astype(np.float32) - 128) / 128 * 127.5 + 127.5
  np.testing.assert_allclose(np.asarray(jax.jit(SMALL.apply)(variables, moved).pool3), same, rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(jax.jit(SMALL.apply)(variables, images[:2]).pool3) - same).max() > 1e-3
  with pytest.raises(ValueError, match="preprocessing='tf': choose one of pytorch_fid, tensorflow"):
    inception.preprocess_images(images, preprocessing='tf')


def test_converter_places_every_tensor(state_dict, variables):
  params, stats = variables['params'], variables['batch_stats']
  w = state_dict['Mixed_6b.branch7x7_2.conv.weight']  # OIHW (128, 128, 1, 7)
  kernel = params['Mixed_6b']['branch7x7_2']['conv']['kernel']  # HWIO (1, 7, 128, 128)
  assert kernel.shape == (1, 7, 128, 128)
  assert kernel[0, 5, 17, 101] == w[101, 17, 0, 5]
  np.testing.assert_array_equal(kernel, w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['fc']['kernel'], state_dict['fc.weight'].T)
  np.testing.assert_array_equal(params['fc']['bias'], state_dict['fc.bias'])
  bn = 'Mixed_7b.branch3x3dbl_3a.bn'
  np.testing.assert_array_equal(params['Mixed_7b']['branch3x3dbl_3a']['bn']['scale'], state_dict[bn + '.weight'])
  np.testing.assert_array_equal(params['Mixed_7b']['branch3x3dbl_3a']['bn']['bias'], state_dict[bn + '.bias'])
  np.testing.assert_array_equal(stats['Mixed_7b']['branch3x3dbl_3a']['bn']['mean'], state_dict[bn + '.running_mean'])
  np.testing.assert_array_equal(stats['Mixed_7b']['branch3x3dbl_3a']['bn']['var'], state_dict[bn + '.running_var'])
  back = inception_convert.to_state_dict(variables)
  assert back.keys() == state_dict.keys()
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_converter_ignores_num_batches_tracked(state_dict):
  with_counters = {**state_dict, 'Conv2d_1a_3x3.bn.num_batches_tracked': np.array(0)}
  converted = inception_convert.convert_state_dict(with_counters)
  assert inception.count_params(converted) == FID_INCEPTION_PARAMS


def test_converter_names_missing_key(state_dict):
  broken = {k: v for k, v in state_dict.items() if k != 'Mixed_6c.branch7x7dbl_4.bn.running_var'}
  with pytest.raises(ValueError, match=r'missing keys: Mixed_6c\.branch7x7dbl_4\.bn\.running_var$'):
    inception_convert.convert_state_dict(broken)


def test_converter_names_misshaped_and_unexpected_keys(state_dict):
  broken = {
      **state_dict, 'fc.weight': np.zeros((1000, 2048), np.float32), 'AuxLogits.fc.bias': np.zeros(1008, np.float32)
  }
  with pytest.raises(ValueError, match=r'misshaped keys: fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)'):
    inception_convert.convert_state_dict(broken)
  with pytest.raises(ValueError, match=r'unexpected keys: AuxLogits\.fc\.bias'):
    inception_convert.convert_state_dict(broken)


def test_msgpack_round_trip_and_missing_file(tmp_path, variables):
  path = str(tmp_path / 'inception_fid.msgpack')
  inception_convert.save_variables(variables, path)
  loaded = inception_convert.load_inception_params(path)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError) as error:
    inception_convert.load_inception_params(str(tmp_path / 'absent.msgpack'))
  message = str(error.value)
  assert 'pt_inception-2015-12-05-6726825d.pth' in message
  assert inception_convert.TORCH_WEIGHTS_URL in message and '--torch_weights=' in message


def test_cli_converts_a_pth_file(tmp_path, state_dict):
  torch = pytest.importorskip('torch')
  pth, out = tmp_path / 'weights.pth', tmp_path / 'out.msgpack'
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, pth)
  inception_convert.main([f'--torch_weights={pth}', f'--out={out}'])
  loaded = inception_convert.load_inception_params(str(out))
  np.testing.assert_array_equal(loaded['params']['Conv2d_4a_3x3']['conv']['kernel'],
                                state_dict['Conv2d_4a_3x3.conv.weight'].transpose(2, 3, 1, 0))
  with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05-6726825d.pth'):
    inception_convert.main([f'--torch_weights={tmp_path / "missing.pth"}', f'--out={out}'])


def test_extract_features_pads_last_batch_and_compiles_once(variables, images):
  pool3, logits, spatial = inception_metrics.extract_features(variables, images, batch_size=2, model=SMALL)
  assert pool3.shape == (5, 2048) and logits.shape == (5, 1008) and spatial.shape == (5, 63)
  assert pool3.dtype == spatial.dtype == np.float32
  traces = inception_metrics._inception_forward._cache_size()  # pylint: disable=protected-access
  inception_metrics.extract_features(variables, images[:3], batch_size=2, model=SMALL)
  assert inception_metrics._inception_forward._cache_size() == traces  # pylint: disable=protected-access
  direct = jax.jit(SMALL.apply)(variables, images)
  # Batch 2 vs 5 may pick other CPU conv algorithms: equal up to float32 rounding.
  np.testing.assert_allclose(pool3, direct.pool3, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, direct.logits_unbiased, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(spatial, direct.spatial, rtol=1e-4, atol=1e-4)


def test_inception_score_uniform_is_one():
  mean, std = inception_metrics.inception_score(np.zeros((100, 1008)), splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize('num_classes, splits', [(10, 10), (1008, 1)])
def test_inception_score_confident_even_predictions_is_num_classes(num_classes, splits):
  labels = np.tile(np.arange(num_classes), splits)
  logits = 200.0 * np.eye(num_classes)[labels]
  mean, std = inception_metrics.inception_score(logits, splits=splits)
  assert mean == pytest.approx(num_classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_two_class_closed_form():
  q = 0.8
  logits = np.log(np.array([[q, 1 - q], [1 - q, q]] * 50))
  mean, _ = inception_metrics.inception_score(logits, splits=1)
  assert mean == pytest.approx(2 * q**q * (1 - q)**(1 - q), rel=1e-12)  # 1.3195...


def _brute_force_precision_recall(real, fake, k):
  def sq_dists(a, b):
    return ((a[:, None, :] - b[None, :, :])**2).sum(-1)

  real_r = np.sort(sq_dists(real, real), axis=1)[:, k]
  fake_r = np.sort(sq_dists(fake, fake), axis=1)[:, k]
  precision = (sq_dists(fake, real) <= real_r[None]).any(axis=1).mean()
  recall = (sq_dists(real, fake) <= fake_r[None]).any(axis=1).mean()
  return precision, recall


def test_precision_recall_identical_and_far_apart_sets():
  real = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
  assert inception_metrics.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
  assert inception_metrics.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)


def test_precision_half_of_fakes_on_the_real_set():
  real = np.random.default_rng(1).standard_normal((100, 32)).astype(np.float32)
  fake = np.concatenate([real[:50], real[50:] + 100.0])
  precision, _ = inception_metrics.precision_recall(real, fake, k=3)
  assert precision == 0.5


def test_precision_recall_matches_brute_force_in_small_chunks():
  rng = np.random.default_rng(2)
  real = rng.standard_normal((150, 16)).astype(np.float32)
  fake = (0.8 * rng.standard_normal((120, 16)) + 0.5).astype(np.float32)
  expected = _brute_force_precision_recall(real.astype(np.float64), fake.astype(np.float64), k=3)
  got = inception_metrics.precision_recall(real, fake, k=3, chunk_size=32)
  assert 0.1 < expected[0] < 0.9 and 0.1 < expected[1] < 0.9
  np.testing.assert_allclose(got, expected, atol=1.5 / 150)  # at most one point on a ball edge


def test_reference_npz_round_trip(tmp_path, variables, images):
  mu, sigma = np.arange(3.0), np.eye(3)
  stats_path = str(tmp_path / 'stats.npz')
  inception_metrics.save_reference_npz(stats_path, mu, sigma)
  loaded = inception_metrics.load_reference(stats_path)
  assert set(loaded) == {'mu', 'sigma'}  # no spatial statistics: no sFID
  np.testing.assert_array_equal(loaded['mu'], mu)
  np.testing.assert_array_equal(loaded['sigma'], sigma)
  with pytest.raises(ValueError, match='arr_0'):
    inception_metrics.load_reference(stats_path, variables, need_features=True)
  with pytest.raises(ValueError, match='give both mu_s and sigma_s'):
    inception_metrics.save_reference_npz(stats_path, mu, sigma, mu_s=mu)
  inception_metrics.save_reference_npz(stats_path, mu, sigma, mu_s=mu[:2], sigma_s=2 * np.eye(2))  # ADM's layout
  loaded = inception_metrics.load_reference(stats_path)
  np.testing.assert_array_equal(loaded['mu_s'], mu[:2])
  np.testing.assert_array_equal(loaded['sigma_s'], 2 * np.eye(2))

  images_path = str(tmp_path / 'images.npz')
  np.savez(images_path, arr_0=images)  # an ADM reference batch with images only
  reference = inception_metrics.load_reference(images_path, variables, batch_size=2, model=SMALL)
  pool3, _, spatial = inception_metrics.extract_features(variables, images, batch_size=2, model=SMALL)
  np.testing.assert_allclose(reference['pool3'], pool3)
  np.testing.assert_allclose(reference['mu'], pool3.mean(0), rtol=1e-5)
  assert reference['sigma'].shape == (2048, 2048)
  np.testing.assert_allclose(reference['mu_s'], spatial.mean(0), rtol=1e-5)
  np.testing.assert_allclose(reference['sigma_s'], np.cov(spatial.astype(np.float64), rowvar=False), rtol=1e-5,
                             atol=1e-9)

  written = str(tmp_path / 'written.npz')
  inception_metrics.write_reference_npz(written, variables, images, batch_size=2, keep_images=True, model=SMALL)
  with np.load(written) as data:
    assert set(data.files) == {'mu', 'sigma', 'mu_s', 'sigma_s', 'arr_0', 'preprocessing'}
    assert data['arr_0'].dtype == np.uint8 and str(data['preprocessing']) == 'pytorch_fid'
    np.testing.assert_allclose(data['mu'], reference['mu'], rtol=1e-6)
    np.testing.assert_allclose(data['mu_s'], reference['mu_s'], rtol=1e-6)
    np.testing.assert_allclose(data['sigma_s'], reference['sigma_s'], rtol=1e-5, atol=1e-9)


def test_a_reference_of_other_preprocessing_is_refused(tmp_path):
  path = str(tmp_path / 'ref.npz')
  inception_metrics.save_reference_npz(path, np.zeros(2), np.eye(2), preprocessing='tensorflow')
  assert 'preprocessing' in inception_metrics.check_reference_npz(path, 'tensorflow')
  with pytest.raises(
      ValueError, match=r"ref\.npz holds statistics of images preprocessed as 'tensorflow', but this "
      r"evaluator preprocesses as 'pytorch_fid'.*preprocessing='tensorflow'"):
    inception_metrics.check_reference_npz(path, 'pytorch_fid')
  inception_metrics.save_reference_npz(path, np.zeros(2), np.eye(2))  # untagged, as ADM's reference batches
  inception_metrics.check_reference_npz(path, 'pytorch_fid')


def test_a_reference_whose_images_are_not_uint8_nhwc_or_not_an_npz_is_refused_when_the_evaluator_is_built(tmp_path):
  path = str(tmp_path / 'ref.npz')
  good = np.zeros((4, 8, 8, 3), np.uint8)
  for images, layout in (
      (good.astype(np.float32) / 255, r'float32 \(4, 8, 8, 3\)'),  # [0, 1] floats, read as 0..255
      (good.transpose(0, 3, 1, 2), r'uint8 \(4, 3, 8, 8\)')):  # NCHW
    for save in (np.savez, np.savez_compressed):
      save(path, arr_0=images, mu=np.zeros(2), sigma=np.eye(2))
      with pytest.raises(
          ValueError, match=r"ref\.npz: its 'arr_0' is not reference images in the ADM layout: need "
          r'uint8 images \[N, H, W, 1 or 3\], got ' + layout):
        inception_metrics.check_reference_npz(path)
  np.savez_compressed(path, arr_0=good)
  assert inception_metrics.check_reference_npz(path) == {'arr_0'}
  np.save(str(tmp_path / 'ref.npy'), good)
  with pytest.raises(ValueError, match=r'ref\.npy: not an \.npz file .*FID reference statistics need'):
    inception_metrics.check_reference_npz(str(tmp_path / 'ref.npy'))
  with pytest.raises(ValueError, match=r"ref\.npy: not an \.npz file .*samples need 'arr_0'"):
    load_samples_npz(str(tmp_path / 'ref.npy'))


def test_evaluate_samples_against_itself(tmp_path, monkeypatch, variables, images):
  # A 2048-d FID costs two 2048x2048 eigendecompositions (seconds to tens of seconds on a busy
  # CPU); tests/evaluation/test_frechet.py covers it, so here a spy checks what it is given.
  dims = []

  def mean_term_only(mu1, sigma1, mu2, sigma2):
    dims.append(len(mu1))
    assert mu1.shape == mu2.shape and sigma1.shape == sigma2.shape == (len(mu1), len(mu1))
    np.testing.assert_allclose(sigma1, sigma2, atol=1e-4)
    return float(np.sum((mu1 - mu2)**2))

  monkeypatch.setattr(inception_metrics.frechet, 'frechet_distance', mean_term_only)
  path = str(tmp_path / 'ref.npz')
  np.savez(path, arr_0=images)
  metrics = inception_metrics.evaluate_samples(variables, images, path, batch_size=2, k=2, is_splits=1, model=SMALL)
  assert dims == [2048, 63]  # FID on pool3, then sFID on the spatial features (3 x 3 x 7 at 75x75)
  assert abs(metrics['fid']) < 1e-3 and abs(metrics['sfid']) < 1e-3
  assert metrics['precision'] == 1.0 and metrics['recall'] == 1.0
  assert metrics['inception_score'] >= 1.0


def test_sfid_is_the_frechet_distance_of_the_spatial_features_to_the_stored_ones(tmp_path, monkeypatch, variables,
                                                                                 images):
  """A reference holding ADM's spatial statistics (mu_s, sigma_s) of other images: sFID is the Fréchet distance of
  the samples' spatial statistics to those, and tells the sets apart."""
  real = inception_metrics.extract_features(variables, images[:3], batch_size=2, model=SMALL)
  fake = inception_metrics.extract_features(variables, images[2:], batch_size=2, model=SMALL)
  path = str(tmp_path / 'ref.npz')
  mu_s, sigma_s = frechet.feature_statistics(real.spatial)
  inception_metrics.save_reference_npz(path, *frechet.feature_statistics(real.pool3), mu_s=mu_s, sigma_s=sigma_s)
  exact = frechet.frechet_distance
  monkeypatch.setattr(
      inception_metrics.frechet,
      'frechet_distance',  # FID's 2048-d eigensolves skipped (costly)
      lambda mu1, *rest: exact(mu1, *rest) if len(mu1) < 100 else 0.0)
  metrics = inception_metrics.evaluate_samples(variables, images[2:], path, batch_size=2, is_splits=1, model=SMALL)
  expected = exact(*frechet.feature_statistics(fake.spatial), mu_s, sigma_s)
  assert metrics['sfid'] == pytest.approx(expected, rel=1e-6) and expected > 1e-3 * np.trace(sigma_s)
  assert 'precision' not in metrics  # no arr_0 in the reference


def test_extract_features_splits_batches_over_every_local_device(variables, images):
  """The default mesh is all 8 (fake) devices; features equal those of a one-device run, and the padding of a
  batch rounded up to the device count is dropped."""
  assert jax.local_device_count() == 8  # tests/conftest.py asks XLA for 8 CPU devices
  one_device = Mesh(np.array(jax.local_devices()[:1]), ('batch',))
  many = np.concatenate([images, images[::-1], images])[:11]  # batch 3 -> 8: one full batch and one padded
  calls = []
  forward = inception_metrics._inception_forward  # pylint: disable=protected-access

  def spy(model, variables, batch):
    calls.append(len(batch.sharding.device_set))
    return forward(model, variables, batch)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(inception_metrics, '_inception_forward', spy)
    pool3, logits, _ = inception_metrics.extract_features(variables, many, 3, SMALL)
  assert calls == [8, 8] and len(pool3) == len(logits) == len(many) == 11
  expected, expected_logits, _ = inception_metrics.extract_features(variables, many, 3, SMALL, mesh=one_device)
  np.testing.assert_allclose(pool3, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)
