"""One seed's epochs and evaluation (jaxae/loop.py): fixed shapes, every example once, and the
numbers of the steps they are made of."""

import jax
import numpy as np
import pytest

from conftest import random_images, tree_close
from jaxae import Config, create_train_state, eval_step, loop, parallel, train_step

# One Conv and one ConvTranspose level: the loop is tested, not the model.
STEP = Config(features=(4,))



@pytest.mark.slow
def test_large_batches_train_in_microbatches_with_the_same_result():
  images = random_images(96)
  mesh = parallel.data_mesh()
  assert loop.microbatch_size(32, mesh, 64) is None
  assert loop.microbatch_size(96, mesh, 64) == 64 * parallel.mesh_size(mesh)
  assert loop.microbatch_size(96, mesh, None) is None
  state = create_train_state(jax.random.key(0), STEP)
  state, step_losses = loop.train_epoch(state, images, 1, seed=0, batch_size=96,
                                        microbatch_per_device=64)
  first_batch = loop.epoch_batches(loop.epoch_key(0, 1), 96, 96)[0][0]
  expected, metrics = jax.jit(train_step)(create_train_state(jax.random.key(0), STEP),
                                          images[first_batch])
  np.testing.assert_allclose(step_losses, [metrics["loss"]], rtol=1e-6)
  tree_close(state.opt_state, expected.opt_state, rtol=1e-4, atol=1e-9)


def test_epoch_batches_cover_every_example_once_and_shuffle_by_epoch():
  idx, mask = loop.epoch_batches(loop.epoch_key(0, 1), 70, 32)
  assert idx.shape == (3, 32) and mask.shape == (3, 32)
  assert sorted(np.asarray(idx)[np.asarray(mask) == 1].tolist()) == list(range(70))
  assert float(mask.sum()) == 70
  again, _ = loop.epoch_batches(loop.epoch_key(0, 1), 70, 32)
  other, _ = loop.epoch_batches(loop.epoch_key(0, 2), 70, 32)
  assert np.array_equal(idx, again) and not np.array_equal(idx, other)


def test_the_epoch_loss_weighs_each_step_by_its_real_examples():
  # 70 examples in batches of 32: 32, 32 and 6 real ones.
  assert loop.epoch_loss(np.array([1.0, 2.0, 4.0]), 70, 32) == (32 + 64 + 24) / 70
  np.testing.assert_array_equal(loop.epoch_loss(np.array([[1.0, 1.0], [2.0, 4.0]]), 40, 32),
                                [1.0, (64 + 32) / 40])
  assert loop.mean_loss(np.array([1.0, 2.0], np.float32)) == 1.5


@pytest.mark.slow
def test_no_recompilation_across_epochs_with_a_partial_last_batch():
  images = random_images(40)  # 40 = 32 + a partial batch of 8.
  state = create_train_state(jax.random.key(0), STEP)
  state, _ = loop.train_epoch(state, images, 1, seed=0, batch_size=32)
  compiles = []

  def listen(event, duration, **_):  # pylint: disable=unused-argument
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    for epoch in (2, 3, 4):
      state, step_losses = loop.train_epoch(state, images, epoch, seed=0, batch_size=32)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert not compiles
  assert int(state.step) == 4 * 2 and step_losses.shape == (2,)


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed():
  images = random_images(40)

  def run(seed):
    state = create_train_state(jax.random.key(seed), STEP)
    losses = []
    for epoch in (1, 2):
      state, step_losses = loop.train_epoch(state, images, epoch, seed=seed, batch_size=16)
      losses.append(np.asarray(step_losses).tolist())
    return losses

  assert run(3) == run(3)
  assert run(3) != run(4)


@pytest.mark.slow
def test_full_batch_step_is_one_step_on_the_whole_set():
  images = random_images(50)
  state = create_train_state(jax.random.key(0), STEP)
  expected, m_expected = jax.jit(train_step)(state, images)
  got, loss = loop.full_batch_step(create_train_state(jax.random.key(0), STEP), images,
                                   chunk_size=16)
  np.testing.assert_allclose(loss, m_expected["loss"], rtol=1e-5)
  tree_close(got.params, expected.params, rtol=1e-4, atol=1e-7)
  assert int(got.step) == 1


@pytest.mark.slow
def test_evaluate_averages_over_every_example():
  images = random_images(23)
  state = create_train_state(jax.random.key(0), STEP)
  out = loop.evaluate(state, images, batch_size=10)
  direct = jax.jit(eval_step)(state, images)
  np.testing.assert_allclose(loop.mean_loss(out["per_example_loss"]), float(direct["loss"]),
                             rtol=1e-5)
  np.testing.assert_allclose(out["reconstructions"], direct["reconstructions"], rtol=1e-5,
                             atol=1e-6)
  assert set(loop.evaluate(state, images, batch_size=10, with_predictions=False)) == {
      "per_example_loss"}
