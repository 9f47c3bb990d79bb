"""The pure steps (jaxae/steps.py): train_step, eval_step, create_train_state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_images, tree_close
from jaxae import Config, create_train_state, eval_step, models, train_step


# The model of the tests of the steps' mechanics (masks, microbatches, jit and scan): one Conv
# and one ConvTranspose level, which compiles in a fifth of the original model's time. The
# original architecture itself is tested in test_models.py and test_pretrained.py.
STEP = Config(features=(4,))



@pytest.mark.slow
def test_loss_falls_on_a_fixed_small_set():
  # Smooth images (upsampled 4x4 noise) are learnable through the 4x4x64 bottleneck.
  coarse = np.random.default_rng(0).uniform(-1, 1, (16, 4, 4, 3))
  images = jax.image.resize(jnp.asarray(coarse, jnp.float32), (16, 32, 32, 3), "bilinear")
  state = create_train_state(jax.random.key(0))
  step = jax.jit(train_step)
  losses = []
  for _ in range(100):
    state, metrics = step(state, images)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 100


@pytest.mark.slow
def test_initialization_in_one_program_is_bitwise_the_op_by_op_init():
  """create_train_state compiles the init as one program; its values are model.init's, run op by
  op, to the bit (published runs retrain from them); Adam's moments start at zero."""
  config = Config(features=(4,))  # One level: 4 arrays, so the op-by-op side compiles fast.
  state = create_train_state(jax.random.key(7), config)
  model = models.model_from_config(config)
  eager = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))["params"]
  assert jax.tree.structure(state.params) == jax.tree.structure(eager)
  for ours, theirs in zip(jax.tree.leaves(state.params), jax.tree.leaves(eager)):
    np.testing.assert_array_equal(ours, theirs)
  adam = state.opt_state[0]
  assert int(adam.count) == 0 and int(state.step) == 0
  assert all(not np.any(m) for m in jax.tree.leaves((adam.mu, adam.nu)))


@pytest.mark.slow
def test_the_init_program_computes_the_default_compilations_values():
  """The init program compiles at LLVM level 1 on CPU (steps._initializer, 4x faster to compile):
  the same parameters, to the bit, as at XLA's default level, here for the U-Net's layers and
  the separation head (the seed model's: the test above and test_pretrained.py)."""
  config = Config(task="separate", model="unet", features=(4, 8))
  state = create_train_state(jax.random.key(5), config)
  model = models.model_from_config(config, state.task.out_channels)
  default = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 32, 32, 3)))["params"])(
      jax.random.key(5))
  assert jax.tree.structure(state.params) == jax.tree.structure(default)
  for ours, theirs in zip(jax.tree.leaves(state.params), jax.tree.leaves(default)):
    np.testing.assert_array_equal(ours, theirs)


def test_a_batch_of_padding_alone_changes_nothing():
  state = create_train_state(jax.random.key(0), Config(features=(4,)))
  images = jnp.ones((4, 32, 32, 3))
  step = jax.jit(train_step)
  moved, _ = step(state, images)  # A real step first, so that Adam's momentum is not zero.
  after, metrics = step(moved, images, jnp.zeros((4,)))
  assert int(after.step) == int(moved.step) == 1 and float(metrics["loss"]) == 0.0
  for a, b in zip(jax.tree.leaves((after.params, after.opt_state)),
                  jax.tree.leaves((moved.params, moved.opt_state))):
    np.testing.assert_array_equal(a, b)


def test_a_reconstruction_state_names_the_batch_it_takes():
  state = create_train_state(jax.random.key(0), Config(features=(4,)))
  batch = {"mixture": jnp.ones((2, 32, 32, 3)), "digit": jnp.ones((2, 32, 32, 1))}
  for step in (train_step, eval_step):
    with pytest.raises(ValueError, match=r"reconstruct task takes batches of mean images.*dict "
                                         r"with keys \['digit', 'mixture'\]"):
      step(state, batch)


@pytest.mark.slow
def test_steps_compose_with_scan_and_user_jit():
  images = random_images(8)
  state0 = create_train_state(jax.random.key(1), STEP)

  @jax.jit
  def three_steps(state):
    def body(s, _):
      s, m = train_step(s, images)
      return s, m["loss"]
    return jax.lax.scan(body, state, None, length=3)

  scanned, losses = three_steps(state0)
  state = state0
  for i in range(3):
    state, m = jax.jit(train_step)(state, images)
    np.testing.assert_allclose(losses[i], m["loss"], rtol=1e-5)
  tree_close(scanned.params, state.params, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_microbatched_step_is_the_same_step():
  # 10 examples, 3 of them masked, in microbatches of 4 (the last one padded by 2).
  images = random_images(10)
  mask = jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1, 0, 1], jnp.float32)
  state = create_train_state(jax.random.key(0), STEP)
  whole, m_whole = jax.jit(train_step)(state, images, mask)
  split, m_split = jax.jit(lambda s, x, m: train_step(s, x, m, microbatch_size=4))(
      state, images, mask)
  np.testing.assert_allclose(m_split["loss"], m_whole["loss"], rtol=1e-6)
  # Adam's first step is lr * sign(grad): compare the moments, which carry the gradient itself.
  tree_close(split.opt_state, whole.opt_state, rtol=1e-4, atol=1e-9)
  tree_close(split.params, whole.params, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_eval_step_with_state_or_params():
  images = random_images(4)
  state = create_train_state(jax.random.key(0))
  out = jax.jit(eval_step)(state, images)
  assert out["reconstructions"].shape == images.shape
  expected = float(jnp.mean((out["reconstructions"] - images) ** 2))
  np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
  out_params = jax.jit(eval_step)(state.params, images)
  np.testing.assert_allclose(out_params["loss"], out["loss"], rtol=1e-6)


@pytest.mark.slow
def test_masked_padding_contributes_nothing():
  real = random_images(3)
  padded = jnp.concatenate([real, 100.0 * jnp.ones((5, 32, 32, 3))])
  mask = jnp.array([1, 1, 1, 0, 0, 0, 0, 0], jnp.float32)
  state = create_train_state(jax.random.key(0), STEP)
  a, ma = jax.jit(train_step)(state, real)
  b, mb = jax.jit(train_step)(state, padded, mask)
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  # Adam divides by sqrt(v): float noise of 1e-7 in a near-zero gradient shows up at that scale.
  tree_close(a.params, b.params, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_optimizer_is_configurable():
  state = create_train_state(jax.random.key(0), STEP.replace(optimizer="sgd", learning_rate=0.1))
  new_state, _ = jax.jit(train_step)(state, random_images(4))
  assert int(new_state.step) == 1


@pytest.mark.parametrize("shape,dtype", [((2, 28, 28, 3), jnp.float32),
                                         ((2, 3, 32, 32), jnp.float32),
                                         ((2, 32, 32, 3), jnp.uint8),
                                         ((32, 32, 3), jnp.float32)])
@pytest.mark.slow
def test_steps_refuse_images_the_model_cannot_reconstruct(shape, dtype):
  state = create_train_state(jax.random.key(0))
  images = jnp.zeros(shape, dtype)
  for step in (train_step, eval_step):
    with pytest.raises(ValueError, match=r"Expected float images \[B, H, W, 3\] \(NHWC"):
      step(state, images)


@pytest.mark.parametrize("size", [0, -4, 2.5])
def test_microbatch_size_must_be_positive(size):
  state = create_train_state(jax.random.key(0), STEP)
  with pytest.raises(ValueError, match="microbatch_size must be a positive int"):
    train_step(state, jnp.zeros((4, 32, 32, 3)), microbatch_size=size)


@pytest.mark.slow
def test_create_train_state_runs_inside_jit_and_vmap_with_the_same_values():
  """Before: under the caller's jit it failed (its init program's compiler options are for a
  top-level jit only)."""
  key = jax.random.key(5)
  eager = create_train_state(key, STEP)
  jitted = jax.jit(create_train_state, static_argnums=1)(key, STEP)
  mapped = jax.vmap(lambda k: create_train_state(k, STEP).params)(jnp.stack([key, key]))
  assert int(jitted.step) == 0
  tree_close(jitted.params, eager.params, rtol=0, atol=0)
  tree_close(jax.tree.map(lambda x: x[1], mapped), eager.params, rtol=0, atol=0)


@pytest.mark.parametrize("rng", [0, np.int32(3), jnp.zeros((3,), jnp.uint32), Config()])
def test_create_train_state_refuses_what_is_no_key(rng):
  with pytest.raises(TypeError, match=r"takes a random key, e\.g\. jax\.random\.key\(seed\)"):
    create_train_state(rng, STEP)


@pytest.mark.parametrize("shape", [(3,), (1,), (4, 1), ()])
def test_a_mask_of_another_shape_than_the_batch_is_refused(shape):
  """Before: [3] failed in XLA's broadcasting message, and [1] or [] weighed every example alike."""
  state = create_train_state(jax.random.key(0), STEP)
  images, mask = jnp.zeros((4, 32, 32, 3)), jnp.ones(shape)
  for step in (train_step, eval_step, jax.jit(train_step), jax.jit(eval_step)):
    with pytest.raises(ValueError, match=r"mask_B must hold one weight per example, shape \[4\]"):
      step(state, images, mask)
  assert train_step(state, images, jnp.ones(4))[1]["loss"].shape == ()  # [B] is taken.


@pytest.mark.slow
def test_a_traced_microbatch_size_says_to_make_it_static():
  state = create_train_state(jax.random.key(0), STEP)
  images = jnp.zeros((4, 32, 32, 3))
  with pytest.raises(ValueError, match=r"static_argnames=\('microbatch_size',\)"):
    jax.jit(train_step)(state, images, microbatch_size=2)
  _, metrics = jax.jit(train_step, static_argnames="microbatch_size")(state, images,
                                                                     microbatch_size=2)
  assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_eval_step_refuses_another_models_bare_params_and_takes_its_apply_fn():
  """Evaluating another model's params as the default model once returned numbers quietly."""
  other = create_train_state(jax.random.key(0), Config(features=(4, 8)))
  images = jnp.zeros((2, 32, 32, 3))
  with pytest.raises(ValueError, match="not the default model's; pass its model's apply"):
    eval_step(other.params, images)
  # Compiled (the model's apply is static), not op by op: the same function, some 100 programs
  # fewer to compile.
  evaluate = jax.jit(eval_step, static_argnames="apply_fn")
  np.testing.assert_allclose(evaluate(other.params, images, apply_fn=other.apply_fn)["loss"],
                             evaluate(other, images)["loss"])
  default = create_train_state(jax.random.key(0))
  np.testing.assert_allclose(evaluate(default.params, images)["loss"],
                             evaluate(default, images)["loss"])


def test_steps_refuse_an_empty_batch():
  """Before: train_step raised ZeroDivisionError inside conv.py and eval_step returned loss NaN."""
  state = create_train_state(jax.random.key(0), STEP)
  empty = jnp.zeros((0, 32, 32, 3))
  for step in (train_step, eval_step):
    with pytest.raises(ValueError, match=r"at least one image in images; got an empty batch"):
      step(state, empty)
