"""The separation task: consistent estimates, per-source metrics, and runs that resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import tiny_splits
from jaxae import Config, loop, mix
from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION
from jaxae.metrics import unit_psnr, unit_ssim
from jaxae.preprocess import grey_digits, mean_images
from jaxae.run.train_and_evaluate import train_and_evaluate
from jaxae.steps import check_config, create_train_state, eval_step, train_step
from jaxae.tasks import TASKS, Reconstruct, Separate, Task, resized_digit, task_from_config

QUIET = lambda _: None


def _normalized(images_01, norm):
  return (images_01 - jnp.asarray(norm.mean)) / jnp.asarray(norm.std)


@pytest.mark.parametrize("separation,side", [("digit", 8), ("project", 8), ("digit28", 32)])
def test_estimates_are_consistent_with_the_mean_image(separation, side):
  """0.5 * (normalized digit + normalized photo) is the mean image, whatever the model outputs."""
  task = Separate(separation=separation)
  rng = np.random.default_rng(0)
  mixture = jnp.asarray(rng.uniform(-2, 2, (3, side, side, 3)), jnp.float32)
  outputs = jnp.asarray(rng.normal(size=(3, side, side, task.out_channels)), jnp.float32)
  digit, photo = jax.jit(task.estimate)(outputs, mixture)
  assert digit.shape == (3, side, side, 1) and photo.shape == (3, side, side, 3)
  mean = 0.5 * (_normalized(digit, MNIST_NORMALIZATION) + _normalized(photo, CIFAR_NORMALIZATION))
  np.testing.assert_allclose(mean, mixture, atol=2e-6)


def test_true_sources_are_a_fixed_point_of_both_formulations():
  """The true pair is consistent, so predicting it exactly gives it back (projection included)."""
  train, _ = tiny_splits(4, 1)
  digit = grey_digits(train.mnist_images)
  photo = jnp.asarray(train.cifar_images, jnp.float32) / 255
  for task, outputs in ((Separate("digit"), digit),
                        (Separate("project"), jnp.concatenate([digit, photo], axis=-1)),
                        (Separate("digit28"), digit)):
    got_digit, got_photo = jax.jit(task.estimate)(outputs, train.images)
    np.testing.assert_allclose(got_digit, digit, atol=1e-5)
    np.testing.assert_allclose(got_photo, photo, atol=1e-5)


def test_digit28_is_a_resized_28x28_digit_in_0_1_and_closer_to_the_true_digit():
  """Every "digit28" digit is preprocessing's resize of a 28x28 digit in [0, 1]; a noisy true
  digit comes back closer to the truth, which is such a digit: white noise keeps 784/1024 of
  its energy in the resizes' subspace, and the clip removes more."""
  train, _ = tiny_splits(6, 1)
  truth = grey_digits(train.mnist_images)
  rng = np.random.default_rng(3)
  noisy = truth + jnp.asarray(rng.normal(0, 0.1, truth.shape), jnp.float32)
  got = resized_digit(noisy)
  # A resized 28x28 digit in [0, 1]: fit X by least squares (R has full column rank) and resize.
  x28 = np.linalg.lstsq(np.kron(*[_resize_matrix()] * 2),
                        np.asarray(got).reshape(6, -1).T, rcond=None)[0]
  assert x28.min() >= -1e-5 and x28.max() <= 1 + 1e-5
  u8 = jnp.asarray(np.round(x28.T.reshape(6, 28, 28, 1) * 255), jnp.uint8)
  np.testing.assert_allclose(got, grey_digits(u8), atol=3e-3)  # Up to rounding X to 1/255.
  assert float(jnp.mean((got - truth) ** 2)) < 0.8 * float(jnp.mean((noisy - truth) ** 2))
  with pytest.raises(ValueError, match="32x32"):
    resized_digit(noisy[:, :16, :16])


def test_digit28_gradients_pass_the_clip():
  """A pixel clipped at 0 whose true value is higher still gets a gradient towards it."""
  target = jnp.full((1, 32, 32, 1), 0.5)
  outputs = jnp.full((1, 32, 32, 1), -1.0)  # Every X clipped to 0.
  grad = jax.jit(jax.grad(lambda o: jnp.sum((resized_digit(o) - target) ** 2)))(outputs)
  assert float(jnp.min(grad)) < 0  # Descent raises every output.


def _resize_matrix():
  """Preprocessing's 28 -> 32 bilinear of one axis, from grey_digits itself: column j is the
  resized image of a white row j, read along a column."""
  rows = np.zeros((28, 28, 28, 1), np.uint8)
  for j in range(28):
    rows[j, j, :, 0] = 255
  return np.asarray(grey_digits(rows))[:, :, 0, 0].T


def test_projection_is_the_nearest_consistent_pair():
  """Moving the projected digit either way makes the pair farther from the model's output."""
  task = Separate("project")
  rng = np.random.default_rng(1)
  mixture = jnp.asarray(rng.uniform(-1, 1, (1, 2, 2, 3)), jnp.float32)
  outputs = jnp.asarray(rng.uniform(0, 1, (1, 2, 2, 4)), jnp.float32)
  digit, _ = task.estimate(outputs, mixture)

  def distance(d):
    return float(jnp.sum((d - outputs[..., :1]) ** 2)
                 + jnp.sum((task.photo_from_digit(d, mixture) - outputs[..., 1:]) ** 2))
  for step in (1e-2, -1e-2):
    assert distance(digit + step) > distance(digit)


def test_per_source_metrics_match_scikit_image():
  rng = np.random.default_rng(2)
  truth = rng.uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
  estimate = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
  np.testing.assert_allclose(unit_psnr(truth, estimate),
                             [peak_signal_noise_ratio(t, e, data_range=1)
                              for t, e in zip(truth, estimate)], atol=1e-4)
  np.testing.assert_allclose(unit_ssim(truth, estimate),
                             [structural_similarity(t, e, channel_axis=-1, data_range=1,
                                                    gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False)
                              for t, e in zip(truth, estimate)], atol=1e-4)
  grey = truth[..., :1]
  np.testing.assert_allclose(unit_psnr(grey, np.zeros_like(grey)),
                             [peak_signal_noise_ratio(t, np.zeros_like(t), data_range=1)
                              for t in grey], atol=1e-4)
  with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
    unit_psnr(truth * 255, estimate)
  with pytest.raises(ValueError, match="float images"):
    unit_ssim((truth * 255).astype(np.uint8), estimate)


def test_trivial_row_is_the_blank_digit_and_the_leftover_photo():
  _, test = tiny_splits(1, 12)
  task = Separate()
  metrics = task.final_metrics(test, dict(zip(("digit", "photo"), task.trivial_estimate(test))))
  assert metrics["digit_psnr_mean"] == pytest.approx(metrics["trivial"]["digit_psnr_mean"])
  digit = np.asarray(grey_digits(test.mnist_images), np.float64)
  expected = np.mean(-10 * np.log10(np.mean(digit ** 2, axis=(1, 2, 3))))
  assert metrics["trivial"]["digit_psnr_mean"] == pytest.approx(expected, abs=1e-3)


def _three_steps_lower_the_separation_loss(state):
  """Trains `state` (a separation state) 3 steps on 8 pairs; returns (state, their split)."""
  train, _ = tiny_splits(8, 1)
  batch = state.task.examples(train)
  step, evaluate = jax.jit(train_step), jax.jit(eval_step)
  before = evaluate(state, batch)
  assert before["digit"].shape == (8, 32, 32, 1) and before["photo"].shape == (8, 32, 32, 3)
  for _ in range(3):
    state, _ = step(state, batch)
  assert int(state.step) == 3
  assert float(evaluate(state, batch)["loss"]) < float(before["loss"])
  return state, train


def test_a_small_separation_model_trains_on_the_tasks_batches():
  """The separate task through the steps, fast: a one-level seed model (the slow test below
  takes the U-Net, the projection and the errors)."""
  state = create_train_state(jax.random.key(0), Config(task="separate", features=(4,)))
  assert state.task == Separate("digit", "log_mse")
  _three_steps_lower_the_separation_loss(state)


@pytest.mark.slow
def test_the_task_follows_the_config_and_steps_train_it():
  assert task_from_config(Config()) == Reconstruct()
  config = Config(task="separate", model="unet", features=(4, 8), separation="project",
                  separation_loss="mse", conv_impl="gemm_vjp")
  state = create_train_state(jax.random.key(0), config)
  assert state.task == Separate("project", "mse")
  state, train = _three_steps_lower_the_separation_loss(state)
  with pytest.raises(ValueError, match="separate task takes batches"):
    train_step(state, train.images)
  with pytest.raises(ValueError, match="task must be one of"):
    check_config(Config(task="denoise"))
  with pytest.raises(ValueError, match="model must be one of"):
    check_config(Config(model="resnet"))
  with pytest.raises(ValueError, match="separation must be one of"):
    task_from_config(Config(task="separate", separation="halves"))


@pytest.mark.slow
def test_separate_run_resumes_to_the_uninterrupted_history(tmp_path):
  train, test = tiny_splits(24, 8)
  config = Config(task="separate", model="unet", features=(4, 8), epochs=2, batch_size=8,
                  conv_impl="gemm_vjp")
  straight = train_and_evaluate(config, train, test, tmp_path / "a", log=QUIET)
  train_and_evaluate(config.replace(epochs=1), train, test, tmp_path / "b", log=QUIET)
  resumed = train_and_evaluate(config, train, test, tmp_path / "b", log=QUIET)
  assert resumed["history"] and [h["train_loss"] for h in resumed["history"]] == [
      h["train_loss"] for h in straight["history"]]
  assert resumed["final"] == straight["final"]
  final = straight["final"]
  assert {"digit_psnr_mean", "photo_ssim_std", "trivial"} <= set(final)
  assert (tmp_path / "b" / "separation.png").stat().st_size > 1000
  with pytest.raises(Exception, match="different settings.*task"):
    train_and_evaluate(Config(epochs=1, batch_size=8), train, test, tmp_path / "b", log=QUIET)


@pytest.mark.slow
def test_cosine_schedule_run_killed_mid_run_resumes_to_the_same_history(tmp_path):
  """A run killed after epoch 1 of 2 (its epoch-2 checkpoint never written) resumes with the same
  learning rates: the schedule is a function of the step, which the checkpoint holds."""
  import shutil  # pylint: disable=g-import-not-at-top
  train, test = tiny_splits(24, 8)
  config = Config(task="separate", features=(4, 8), epochs=2, batch_size=8,
                  lr_schedule="cosine", warmup_steps=2, conv_impl="gemm_vjp")
  straight = train_and_evaluate(config, train, test, tmp_path, log=QUIET)
  shutil.rmtree(tmp_path / "checkpoints" / "2")
  (tmp_path / "metrics.json").unlink()
  lines = []
  resumed = train_and_evaluate(config, train, test, tmp_path, log=lines.append)
  assert f"Resuming {tmp_path} after epoch 1." in lines
  assert resumed["history"][1]["train_loss"] == straight["history"][1]["train_loss"]
  assert resumed["final"] == straight["final"]


@pytest.mark.slow
def test_cosine_schedule_warms_up_from_zero_and_needs_the_epoch_length():
  config = Config(lr_schedule="cosine", warmup_steps=2, epochs=1, features=(4, 8))
  with pytest.raises(ValueError, match="needs the run's steps_per_epoch"):
    create_train_state(jax.random.key(0), config)
  state = create_train_state(jax.random.key(0), config, steps_per_epoch=4)
  images = tiny_splits(4, 1)[0].images
  step = jax.jit(train_step)
  first, _ = step(state, images)
  second, _ = step(first, images)
  for p0, p1, p2 in zip(*(jax.tree.leaves(s.params) for s in (state, first, second))):
    np.testing.assert_array_equal(p1, p0)  # Learning rate 0 at step 0.
  assert any(not np.array_equal(p2, p1) for p1, p2 in zip(jax.tree.leaves(first.params),
                                                          jax.tree.leaves(second.params)))


def test_every_task_implements_the_declared_interface():
  for name, task_type in TASKS.items():
    task = task_from_config(Config(task=name))
    assert isinstance(task, task_type) and isinstance(task, Task), name
    assert task.name == name and task.out_channels > 0 and task.loss_label
