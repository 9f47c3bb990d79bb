"""Every published params file loads ready to use and computes what its run recorded."""

import functools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, shared_data_dir
from jaxae import Config, create_train_state, load_mixed, load_model, load_params, save_params
from jaxae.config import from_config_dict, without_removed_options
from jaxae.models import model_from_config
from jaxae.platforms import resolve_conv_impl

PUBLISHED = sorted(str(p.relative_to(REPO)) for p in (REPO / "results").rglob("params.msgpack"))


def test_the_published_files_are_all_found():
  assert len(PUBLISHED) >= 13, PUBLISHED


def _recorded(path: str) -> Config:
  """The config of the run as its metrics.json recorded it (its conv_impl included)."""
  record = json.loads((REPO / path).with_name("metrics.json").read_text())["config"]
  record.pop("conv_transpose", None)  # An earlier name of the formulation setting.
  # Training choices since removed: a trained model's config reads at any value (load_params).
  return from_config_dict(without_removed_options(record, trained=True))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _predict(task, apply_fn, params, images):
  return task.predict(apply_fn, params, images)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jvp(task, apply_fn, params, images):
  return jax.jvp(lambda p: task.predict(apply_fn, p, images), (params,),
                 (jax.tree.map(jnp.ones_like, params),))[1]


@pytest.mark.slow
@pytest.mark.parametrize("path", PUBLISHED)
def test_a_published_file_loads_ready_to_differentiate_and_predicts_as_its_run(path, test_split):
  # Before: 7 of these files recorded conv_impl gemm_vjp or gemm, so jax.jvp raised
  # ("can't apply forward-mode autodiff (jvp) to a custom_vjp function") and an accelerator would
  # have run the CPU's GEMMs; the 6 cosine-schedule runs' configs refused create_train_state.
  recorded = _recorded(path)
  loaded = load_model(REPO / path, replica=0 if recorded.num_seeds > 1 else None)
  assert loaded.config == recorded.replace(conv_impl="auto", seed=loaded.config.seed, num_seeds=1)
  assert loaded.model.conv_impl == resolve_conv_impl("auto", jax.default_backend())
  images = test_split.images[:64]
  tangents = _jvp(loaded.task, loaded.model.apply, loaded.params, images[:2])
  assert all(np.isfinite(t).all() and np.abs(t).sum() > 0 for t in jax.tree.leaves(tangents))
  # The run computed the layers its own way; load_model the platform's. Both are the same
  # function: on real test pairs the predictions agree to the last bit, so the recorded metrics
  # reproduce (evaluate.py --params; the closing note lists every file's).
  ours = _predict(loaded.task, loaded.model.apply, loaded.params, images)
  as_run = model_from_config(recorded, loaded.task.out_channels)
  if as_run is loaded.model:
    return  # The run's own formulation ("auto", or this platform's).
  theirs = _predict(loaded.task, as_run.apply, loaded.params, images)
  assert set(ours) == ({"reconstructions"} if recorded.task == "reconstruct"
                       else {"digit", "photo"})
  for key in ours:
    np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]), err_msg=key)


@pytest.mark.slow
def test_a_cosine_run_s_params_load_without_a_schedule_and_train_on_with_one():
  path = REPO / "results" / "separate_unet_cosine" / "params.msgpack"
  loaded = load_model(path)
  assert loaded.config.lr_schedule == "cosine"  # Nothing was asked of the schedule.
  params, config = load_params(path)
  with pytest.raises(ValueError, match="needs the run's steps_per_epoch.*jaxae.load_model"):
    create_train_state(jax.random.key(0), config)
  state = create_train_state(jax.random.key(0), config, steps_per_epoch=10).replace(params=params)
  assert state.apply_fn == loaded.model.apply


@pytest.mark.slow
def test_a_published_file_reproduces_its_recorded_metrics_exactly(test_split):
  path = REPO / "results" / "rerun_gemm" / "corrected" / "params.msgpack"
  loaded = load_model(path)
  predictions = _predict(loaded.task, loaded.model.apply, loaded.params, test_split.images)
  metrics = loaded.task.final_metrics(test_split, jax.tree.map(np.asarray, predictions))
  final = json.loads(path.with_name("metrics.json").read_text())["final"]
  for key, value in metrics.items():
    assert value == final[key], key


@pytest.fixture(scope="module")
def test_split():
  return load_mixed(shared_data_dir(), splits=("test",))["test"]


@pytest.mark.slow
def test_an_epoch_trains_exactly_as_the_published_corrected_run_did(test_split):
  """The corrected recipe's first epoch on the real data ends at the losses its published run
  recorded, to the last bit: the epoch program's floating-point order is part of reproducing
  RESULTS.md. (A select guarding train_step against all-padding batches, inside the epoch's step,
  once moved the epoch-1 train loss from 0.04916527893722057 to 0.049177850205302236.)"""
  from jaxae import loop, platforms  # pylint: disable=g-import-not-at-top
  recorded = json.loads((REPO / "results/rerun_gemm/corrected/metrics.json").read_text())
  config = _recorded("results/rerun_gemm/corrected/params.msgpack")
  train = load_mixed(shared_data_dir(), splits=("train",))["train"]
  state = create_train_state(jax.random.key(config.seed), config.replace(conv_impl="gemm_vjp"),
                             steps_per_epoch=loop.steps_per_epoch(len(train), 32))
  micro, eval_batch = platforms.CPU_BATCH_SIZES["seed"]  # As the run trained and evaluated.
  state, step_losses = loop.train_epoch(state, train.images, 1, seed=config.seed,
                                        batch_size=config.batch_size,
                                        microbatch_per_device=micro)
  train_loss = loop.epoch_loss(step_losses, len(train), config.batch_size)
  test_loss = loop.mean_loss(loop.evaluate(state, test_split.images, batch_size=eval_batch,
                                           with_predictions=False)["per_example_loss"])
  assert (train_loss, test_loss) == (recorded["history"][0]["train_loss"],
                                     recorded["history"][0]["test_loss"])


@pytest.mark.slow
def test_predict_warns_on_images_that_are_not_normalized_mean_images(tmp_path):
  # A small model of the file format (the check is the file's config's, not its weights').
  config = Config(features=(4,))
  save_params(tmp_path / "params.msgpack",
              create_train_state(jax.random.key(0), config).params, config)
  model = load_model(tmp_path / "params.msgpack")
  rng = np.random.default_rng(0)
  raw_BHWC = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)  # 0-255, not normalized.
  normalized_BHWC = rng.uniform(-1.5, 1.8, (4, 32, 32, 3)).astype(np.float32)
  vmapped = jax.vmap(model.predict, (None, 0))
  for predict, batch in ((model.predict, lambda x: x), (jax.jit(model.predict), lambda x: x),
                         (vmapped, lambda x: x[:, None])):
    with pytest.warns(UserWarning, match="far outside the normalized mean images"):
      jax.block_until_ready(predict(model.params, batch(raw_BHWC)))
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      jax.block_until_ready(predict(model.params, batch(normalized_BHWC)))


def test_encode_and_decode_refuse_what_is_not_their_input(tmp_path):
  """Before: a latent of another width failed in flax's message about a kernel's shape."""
  config = Config(features=(4,))
  save_params(tmp_path / "params.msgpack",
              create_train_state(jax.random.key(0), config).params, config)
  model = load_model(tmp_path / "params.msgpack")
  images_BHWC = jnp.zeros((2, 32, 32, 3))
  latent_BHWC = model.encode(model.params, images_BHWC)
  assert latent_BHWC.shape == (2, 16, 16, 4)
  assert model.decode(model.params, latent_BHWC).shape == (2, 32, 32, 3)
  for latent in (images_BHWC, latent_BHWC[0], latent_BHWC.astype(jnp.int32)):
    with pytest.raises(ValueError, match=r"decode takes float latent codes \[B, h, w, 4\]"):
      model.decode(model.params, latent)
  with pytest.raises(ValueError, match=r"Expected float images \[B, H, W, 3\]"):
    model.encode(model.params, np.zeros((2, 32, 32, 3), np.uint8))
