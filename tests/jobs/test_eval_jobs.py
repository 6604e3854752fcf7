"""Evaluation jobs: --mode=eval and --mode=fid_stats, the evaluator registry, evaluators during training.

The FID Inception runs with random weights at its real input size (8x8 digits resized to 299), on 8
images: about 3 s a batch on a 2-core CPU, and one 2048-d FID (two eigendecompositions) about 15 s.
"""
import dataclasses
import gzip
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import evaluation
from jobs import train
from evaluation import frechet, inception_convert, inception_metrics
from jobs import eval as eval_job
from jobs import fid_stats
from models.clip_convert import save_converted
from evaluation.clip_score import preprocess_image
from text.clip_bpe import CLIPTokenizer
from evaluation.digits import digits_metrics
from input_pipeline import create_source
from models.clip import CLIP_CONFIGS, CLIPModel, init_clip_params
from input_pipeline.files import write_npz
from input_pipeline.images import to_uint8
from jobs.sample import run_sample_job
from tests.tiny import tiny_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_MERGES = ['h e', 'l l', 'he ll', 'hell o</w>', 'c a', 'ca t</w>', 'p h', 'ph o', 'pho t', 'phot o</w>']


def read_jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def digits_uint8():
  """The 1,797 digits as the dataset source gives them, back in uint8 [N, 8, 8, 1], and their labels."""
  data = create_source(tiny_unet_config().data).get(np.arange(1797))
  return to_uint8(data['image']), data['label']


def eval_config(**fields):
  return ml_collections.ConfigDict(fields)


# --- the registry ------------------------------------------------------------------------------------------


def test_fid_stats_of_a_folder_for_latents_encoded_elsewhere(tmp_path):
  """--images=<folder> with a latent config whose data.pixels.source is unset: the images come at pixels.image_size."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for i in range(3):
    Image.fromarray(np.full((40, 60, 3), 50 * i, np.uint8)).save(tmp_path / f'{i}.png')
  config = ml_collections.ConfigDict(
      {'data': {'source': 'latents', 'image_size': 4, 'pixels': {'source': '', 'image_size': 32}}})
  chunks, total, _ = fid_stats.reference_image_chunks(config, str(tmp_path))
  images = np.concatenate(list(chunks))
  assert total == 3 and images.shape == (3, 32, 32, 3) and images[:, 0, 0, 0].tolist() == [0, 50, 100]


def test_fid_stats_of_a_folder_reads_it_in_the_models_channels(tmp_path):
  """A grey model's reference from --images=<folder of colour files> is the grey images it trains on, not RGB."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  colour = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(2)]
  for i, image in enumerate(colour):
    (tmp_path / 'c').mkdir(exist_ok=True)
    Image.fromarray(image).save(tmp_path / f'c/{i}.png')
  data = ml_collections.ConfigDict(
      {'source': 'image_folder', 'path': str(tmp_path), 'image_size': 12, 'channels': 1, 'num_classes': 0})
  chunks, _, description = fid_stats.reference_image_chunks(ml_collections.ConfigDict({'data': data}), str(tmp_path))
  grey = np.concatenate(list(chunks))
  trained = np.concatenate(list(fid_stats.dataset_image_chunks(data)[0]))
  assert grey.shape == (2, 12, 12, 1) and '12x12x1' in description
  np.testing.assert_array_equal(grey, trained)
  np.testing.assert_array_equal(grey[..., 0], [np.asarray(Image.fromarray(c).convert('L')) for c in colour])


def test_fid_stats_of_a_captioned_dataset_reads_each_image_once(tmp_path):
  """coco_captions lists each image once per caption; the reference must hold each image once."""
  pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('array_record')
  from tests import tfds_datasets  # pylint: disable=import-outside-toplevel
  tfds_datasets.prepare_coco_captions(tmp_path)
  data = ml_collections.ConfigDict({
      'source': 'tfds', 'name': 'coco_captions', 'split': 'train', 'image_size': 8, 'channels': 3, 'captions': True,
      'num_classes': 0, 'tfds_data_dir': str(tmp_path)
  })
  captioned = create_source(data, tokenize=False)
  assert len(captioned) == 20  # what training sees: 4 images x 5 captions
  chunks, total, _ = fid_stats.dataset_image_chunks(data)
  images = np.concatenate(list(chunks))
  assert total == 4 and images.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(images, to_uint8(captioned.get(np.arange(0, 20, 5))['image']))
  assert len({image.tobytes() for image in images}) == 4
  assert data.captions  # the caller's config is left as it was


def test_registry_names_and_lazy_imports():
  assert set(evaluation.EVALUATORS) >= {'digits', 'inception', 'clip_score'}
  code = ('import sys, evaluation; print(sorted(m for m in ("torch", "tensorflow", "transformers", "sklearn") '
          'if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'  # the registry imports the evaluators' modules, none of the optional packages


def test_running_feature_statistics_equal_numpy():
  x = np.random.default_rng(0).normal(size=(103, 5)) * [1, 2, 3, 4, 5] + 1e4  # a large common offset
  running = frechet.RunningFeatureStatistics()
  for start in range(0, 103, 20):
    running.add(x[start:start + 20])
  mu, sigma = running.mean_and_covariance()
  np.testing.assert_allclose(mu, x.mean(0), rtol=1e-14)
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9)


def test_reference_images_of_a_latent_model_are_its_pixels():
  data = ml_collections.ConfigDict(
      {'source': 'latents', 'image_size': 32, 'pixels': {'source': 'digits', 'image_size': 256}})
  assert fid_stats.pixel_data_config(data).image_size == 256
  data.pixels.source = ''
  with pytest.raises(ValueError, match='holds VAE latents, not images'):
    fid_stats.pixel_data_config(data)
  assert fid_stats.reference_image_size(ml_collections.ConfigDict({'source': 'digits', 'image_size': 8})) == 8
  assert fid_stats.subset_indices(5, 0).tolist() == [0, 1, 2, 3, 4] == fid_stats.subset_indices(5, 9).tolist()
  chosen = fid_stats.subset_indices(1797, 8)
  assert len(set(chosen)) == 8 and list(chosen) == sorted(chosen) and chosen.max() > 100


# --- training with evaluators ------------------------------------------------------------------------------


class FailingEvaluator:
  calls = []

  def __init__(self, config, eval_config):
    del config, eval_config

  def __call__(self, images, cond):
    FailingEvaluator.calls.append(len(images))
    raise RuntimeError('deliberate failure')


def tiny_config(**evals):
  c = tiny_unet_config(train__num_steps=4, train__checkpoint_every=2)
  c.sample.num_samples = 16
  for name, fields in evals.items():
    c.evals[name] = eval_config(**fields)
  return c


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """4 steps of the tiny U-Net, a deliberately failing evaluator and the digits one every 2 steps."""
  workdir = str(tmp_path_factory.mktemp('trained'))
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(evaluation.EVALUATORS, 'failing', FailingEvaluator)
    FailingEvaluator.calls.clear()
    train.train_and_evaluate(
        tiny_config(failing={'every_steps': 2, 'num_samples': 8}, digits={'every_steps': 2, 'num_samples': 16}),
        workdir)
  TRAINING_RECORDS[workdir] = read_jsonl(workdir)  # before the eval jobs of other tests append theirs
  return workdir


TRAINING_RECORDS = {}  # trained_workdir -> what training wrote to its metrics.jsonl


def test_failing_evaluator_does_not_stop_training(trained_workdir):
  assert FailingEvaluator.calls == [8, 8]  # called at steps 2 and 4, failed both times
  assert sorted(os.listdir(os.path.join(trained_workdir, 'checkpoints'))) == ['2', '4']
  records = TRAINING_RECORDS[trained_workdir]
  digits = [(r['step'], r['eval/digits_accuracy']) for r in records if 'eval/digits_accuracy' in r]
  assert [step for step, _ in digits] == [2, 4] and all(0 <= a <= 1 for _, a in digits)
  assert not any('eval/failing_seconds' in r for r in records)
  assert max(r['step'] for r in records if 'loss' in r) == 4


def test_eval_of_fresh_samples_equals_eval_of_the_sample_job_npz(trained_workdir):
  config = tiny_config(digits={'num_samples': 999, 'every_steps': 0})  # eval mode ignores both fields
  npz = run_sample_job(config, trained_workdir)
  from_npz = eval_job.run_eval_job(config, trained_workdir, samples=npz)
  fresh = eval_job.run_eval_job(config, trained_workdir)
  with np.load(npz) as data:
    expected = digits_metrics(data['arr_0'], data['arr_1'])
  assert from_npz['metrics'] == fresh['metrics'] == expected
  assert (from_npz['name'], fresh['name'], fresh['checkpoint_step'], fresh['num_samples']) == ('samples',
                                                                                               'step_00000004', 4, 16)
  for name, step in (('samples', 0), ('step_00000004', 4)):
    with open(os.path.join(trained_workdir, 'eval', f'{name}.json')) as f:
      assert json.load(f)['metrics'] == expected
    assert any(
        r['step'] == step and r.get('eval/digits_fd') == expected['digits_fd'] for r in read_jsonl(trained_workdir))
  with pytest.raises(FileExistsError, match=r'eval/step_00000004\.json exists; pass --overwrite'):
    eval_job.run_eval_job(config, trained_workdir)


def test_eval_of_real_digits_and_refusal_to_overwrite(tmp_path):
  images, labels = digits_uint8()
  npz = str(tmp_path / 'real_digits.npz')
  write_npz(npz, images, labels)
  config = tiny_config(digits={})
  record = eval_job.run_eval_job(config, str(tmp_path), samples=npz)
  with open(tmp_path / 'eval' / 'real_digits.json') as f:
    assert json.load(f) == record
  assert record['metrics']['digits_accuracy'] > 0.99  # the classifier was fitted to these very digits
  # The real digits against their own statistics; not 0 only because uint8 (x 255/16) is not the classifier's
  # x/16 input exactly (2.3e-5 measured).
  assert abs(record['metrics']['digits_fd']) < 1e-3
  assert record['num_samples'] == 1797 and record['image_shape'] == [8, 8, 1]

  # The command line refuses before building evaluators or reading samples (about 3 s: imports only).
  command = [
      sys.executable, 'main.py', '--mode=eval', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
      f'--samples={npz}'
  ]
  refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert refused.returncode != 0 and 'real_digits.json exists; pass --overwrite' in refused.stderr
  second = eval_job.run_eval_job(config, str(tmp_path), samples=npz, overwrite=True)
  assert second['metrics'] == record['metrics']
  with pytest.raises(ValueError, match=r"needs the labels .*cond\['y'\]"):
    np.savez(tmp_path / 'unlabelled.npz', arr_0=images[:10])
    eval_job.run_eval_job(config, str(tmp_path), samples=str(tmp_path / 'unlabelled.npz'))


# --- FID: reference statistics, then the evaluator -----------------------------------------------------------


@pytest.fixture(scope='module')
def inception_weights(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('inception') / 'random_inception.msgpack')
  variables = inception_convert.convert_state_dict(inception_convert.random_state_dict(seed=0))
  inception_convert.save_variables(variables, path)
  return path


def test_fid_stats_then_fid_of_the_same_digits_is_zero(tmp_path, inception_weights):
  reference = str(tmp_path / 'digits_ref.npz')
  config = tiny_config(inception={
      'inception_weights': inception_weights, 'reference_npz': reference, 'batch_size': 4, 'k': 3, 'is_splits': 2
  })
  _, mu, sigma = fid_stats.run_fid_stats_job(config, str(tmp_path), num_images=4, keep_images=True)
  with pytest.raises(FileExistsError, match='digits_ref.npz exists'):
    fid_stats.run_fid_stats_job(config, str(tmp_path), num_images=4)
  images, labels = digits_uint8()
  chosen = fid_stats.subset_indices(len(images), 4)
  with np.load(reference) as data:
    assert set(data.files) == {'mu', 'sigma', 'mu_s', 'sigma_s', 'arr_0', 'preprocessing'}
    assert data['mu'].shape == (2048,) and str(data['preprocessing']) == 'pytorch_fid'
    assert data['mu_s'].shape == (2023,) and data['sigma_s'].shape == (2023, 2023)  # 17 x 17 x 7 spatial features
    np.testing.assert_array_equal(data['arr_0'], np.repeat(images[chosen], 3, axis=-1))
    trace_s = np.trace(data['sigma_s'])

  # The evaluator's reference features come from the stored RGB arr_0: the 1-channel digits, converted
  # to 3 channels inside the jitted forward, must give the same statistics.
  evaluator = evaluation.create_evaluator('inception', config, config.evals.inception)
  ref_mu, ref_sigma = frechet.feature_statistics(evaluator.reference()['pool3'])
  np.testing.assert_allclose(mu, ref_mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-4, atol=1e-6 * np.abs(sigma).max())

  npz = str(tmp_path / 'same_digits.npz')
  write_npz(npz, images[chosen], labels[chosen])
  metrics = eval_job.run_eval_job(config, str(tmp_path), samples=npz)['metrics']
  other = inception_metrics.extract_features(evaluator.variables, images[(chosen + 1) % len(images)],
                                             batch_size=4).pool3
  mean_term_of_other = float(np.sum((other.mean(0) - mu)**2))  # a lower bound of their FID
  # 4 images span 3 of 2048 dimensions: the ~2045 null eigenvalues leave rounding noise of about 2e-6 of
  # the trace (-0.00048 of 234 measured) where FID is exactly 0.
  print(f"FID {metrics['fid']:.3g}, trace {np.trace(sigma):.4g}, mean term of other digits {mean_term_of_other:.4g}")
  assert abs(metrics['fid']) < 1e-5 * np.trace(sigma) < 1e-3 * mean_term_of_other
  assert abs(metrics['sfid']) < 1e-5 * trace_s  # the same images' spatial statistics, stored by fid_stats
  assert metrics['precision'] == metrics['recall'] == 1.0
  assert 1.0 <= metrics['inception_score'] <= 1008


# --- missing files fail at the start ---------------------------------------------------------------------


def test_missing_weight_files_fail_when_the_run_starts(tmp_path, inception_weights):
  missing = str(tmp_path / 'no_such_inception.msgpack')
  config = tiny_config(inception={'inception_weights': missing, 'reference_npz': str(tmp_path / 'ref.npz')})
  with pytest.raises(FileNotFoundError, match=r"no_such_inception\.msgpack.*pt_inception-2015-12-05"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')  # nothing written, nothing trained
  with pytest.raises(FileNotFoundError, match=r'no_such_inception\.msgpack'):
    eval_job.run_eval_job(config, str(tmp_path / 'run'))  # before looking for checkpoints or sampling
  with pytest.raises(FileNotFoundError, match=r'no_such_inception\.msgpack'):
    fid_stats.run_fid_stats_job(config, str(tmp_path), output=str(tmp_path / 'out.npz'))

  config.evals.inception.inception_weights = inception_weights
  with pytest.raises(FileNotFoundError, match=r'ref\.npz.*--mode=fid_stats'):
    evaluation.create_evaluator('inception', config, config.evals.inception)

  clip = eval_config(clip_weights=str(tmp_path / 'no_clip.msgpack'), vocab=str(tmp_path / 'no_vocab.txt.gz'))
  with pytest.raises(FileNotFoundError, match=r'no_clip\.msgpack.*python -m models\.clip_convert'):
    evaluation.create_evaluator('clip_score', config, clip)


# --- CLIP score --------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_clip_files(tmp_path_factory):
  """A tiny BPE vocabulary and random tiny CLIP weights whose token table fits it."""
  directory = tmp_path_factory.mktemp('clip')
  vocab = str(directory / 'tiny_bpe.txt.gz')
  with gzip.open(vocab, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + '\n'.join(TINY_MERGES) + '\n')
  tiny = CLIP_CONFIGS['tiny']
  config = dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, vocab_size=524))
  params = dict(init_clip_params(config, jax.random.PRNGKey(0)))
  # Random towers happen to disagree here (mean cosine -0.21); flipping the text projection makes the mean
  # positive, so the score is not clipped to 0 and comparing it means something.
  params['text_projection'] = {'kernel': -params['text_projection']['kernel']}
  weights = str(directory / 'tiny_clip.msgpack')
  save_converted(weights, config, params)
  return weights, vocab, config, params


def test_clip_score_evaluator_equals_the_direct_computation(tmp_path, tiny_clip_files):
  weights, vocab, clip_config, params = tiny_clip_files
  images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  prompts = np.array(['hello', 'a cat', 'a photo', 'hello cat', 'photo', 'a photo of a cat'])
  tokenizer = CLIPTokenizer.from_file(vocab)
  pixels = np.stack([preprocess_image(image, 32) for image in images])
  out = CLIPModel(clip_config).apply({'params': params}, pixels, tokenizer.tokenize(list(prompts), 16))
  per_pair = 100 * np.sum(np.asarray(out['image_embeds'], np.float64) * np.asarray(out['text_embeds']), -1)
  assert per_pair.mean() > 1  # not clipped to 0: the comparison means something

  config = tiny_config(clip_score={'clip_weights': weights, 'vocab': vocab, 'batch_size': 4})
  evaluator = evaluation.create_evaluator('clip_score', config, config.evals.clip_score)
  metrics = evaluator(images, {'prompts': prompts, 'y': np.zeros(6, np.int32)})
  assert metrics['clip_score'] == pytest.approx(per_pair.mean(), abs=1e-4)
  assert metrics['clip_score_per_pair_std'] == pytest.approx(per_pair.std(), abs=1e-4)

  npz = str(tmp_path / 'captioned.npz')  # an npz of text-conditional samples carries the captions
  np.savez(npz, arr_0=images, prompts=prompts)
  record = eval_job.run_eval_job(config, str(tmp_path), samples=npz)
  assert record['metrics']['clip_score'] == pytest.approx(per_pair.mean(), abs=1e-4)
  with pytest.raises(ValueError, match=r"needs the caption of every sample in cond\['prompts'\]"):
    evaluator(images, {'y': np.zeros(6, np.int32)})
  small_table = eval_config(clip_weights=weights, vocab=vocab)
  save_converted(str(tmp_path / 'tiny99.msgpack'), CLIP_CONFIGS['tiny'], init_clip_params(CLIP_CONFIGS['tiny']))
  small_table.clip_weights = str(tmp_path / 'tiny99.msgpack')
  with pytest.raises(ValueError, match='524 tokens but .* embeds only 99'):
    evaluation.create_evaluator('clip_score', config, small_table)
