"""The config's optimizer (jaxae/optimizers.py): equal to optax's own where one exists."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae import Config, check_config, create_train_state, train_step
from jaxae.optimizers import make_optimizer
from jaxae.run.workdir import SETTINGS_FILE, holds_other_run, run_settings


def _params():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}


def _grads(k):
  rng = np.random.default_rng(k + 1)
  return {"w": jnp.asarray(rng.normal(size=(3, 4)) * 10, jnp.float32),
          "b": jnp.asarray(rng.normal(size=(4,)) * 10, jnp.float32)}


def _run(tx, steps=4):
  params = _params()
  state = tx.init(params)
  for k in range(steps):
    updates, state = tx.update(_grads(k), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_trees_close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_the_default_is_optax_adam_with_its_state_structure():
  ours, ours_state = _run(make_optimizer(Config()))
  theirs, their_state = _run(optax.adam(1e-3))
  _assert_trees_close(ours, theirs)
  # Checkpoints of runs from before the options existed restore into this state.
  assert jax.tree.structure(ours_state) == jax.tree.structure(their_state)


def test_adam_with_weight_decay_is_optax_adamw_under_a_schedule():
  config = Config(weight_decay=0.1, lr_schedule="cosine", warmup_steps=2, epochs=2,
                  learning_rate=0.01)
  ours, _ = _run(make_optimizer(config, steps_per_epoch=3), steps=6)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.01, 2, 6, 0.0)
  theirs, _ = _run(optax.adamw(schedule, weight_decay=0.1), steps=6)
  _assert_trees_close(ours, theirs)


def test_sgd_weight_decay_is_decoupled_and_clipping_bounds_the_gradient_norm():
  lr, wd, clip = 0.1, 0.5, 1.0
  tx = make_optimizer(Config(optimizer="sgd", learning_rate=lr, weight_decay=wd,
                             grad_clip_norm=clip))
  params, grads = _params(), _grads(0)
  updates, _ = tx.update(grads, tx.init(params), params)
  norm = float(optax.tree.norm(grads))
  assert norm > 10 * clip  # The clip is active.
  for u, g, p in zip(*(jax.tree.leaves(t) for t in (updates, grads, params))):
    np.testing.assert_allclose(u, -lr * g * clip / norm - lr * wd * p, rtol=1e-5, atol=1e-7)
  # Below the norm, clipping changes nothing.
  small = jax.tree.map(lambda g: g * 1e-3, grads)
  clip_only = make_optimizer(Config(optimizer="sgd", learning_rate=lr, grad_clip_norm=clip))
  updates, _ = clip_only.update(small, clip_only.init(params), params)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(small)):
    np.testing.assert_allclose(u, -lr * g, rtol=1e-6)


@pytest.mark.slow
def test_a_train_step_clips_and_decays():
  config = Config(optimizer="sgd", learning_rate=1.0, grad_clip_norm=1e-3, features=(4, 8))
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
  state = create_train_state(jax.random.key(0), config)
  after, _ = jax.jit(train_step)(state, images)
  # Compiled, as in a run (and one program, not one per operation).
  change = jax.jit(lambda a, b: optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))(after.params,
                                                                                 state.params)
  assert 0 < float(change) <= 1e-3 * (1 + 1e-5)
  # Weight decay alone, with a zero learning signal, shrinks every parameter by lr * wd.
  decaying = create_train_state(jax.random.key(0), config.replace(
      grad_clip_norm=0.0, weight_decay=0.25, learning_rate=0.1, optimizer="sgd"))
  zero = jax.tree.map(jnp.zeros_like, decaying.params)
  shrunk = jax.jit(lambda state, grads: state.apply_gradients(grads=grads))(decaying, zero)
  for p0, p1 in zip(jax.tree.leaves(decaying.params), jax.tree.leaves(shrunk.params)):
    np.testing.assert_allclose(p1, p0 * (1 - 0.1 * 0.25), rtol=1e-6)


@pytest.mark.parametrize("changes, field", [
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(grad_clip_norm="1"), "grad_clip_norm"),
    (dict(optimizer="adamw"), "optimizer"),
])
def test_bad_optimizer_settings_are_named(changes, field):
  with pytest.raises(ValueError, match=f"^{field} must be"):
    check_config(Config(**changes))


def test_a_run_from_before_the_options_resumes(tmp_path):
  settings = run_settings(Config(), 0, 0)
  old = {k: v for k, v in settings.items() if k not in ("grad_clip_norm", "weight_decay")}
  (tmp_path / SETTINGS_FILE).write_text(json.dumps(old))
  assert holds_other_run(tmp_path, settings, overwrite=False) is False
  with pytest.raises(Exception, match="weight_decay"):
    holds_other_run(tmp_path, run_settings(Config(weight_decay=0.1), 0, 0), overwrite=False)


def test_muon_is_optax_muon_for_convolution_kernels():
  """Our Muon (no vmap, faster on CPU) computes optax.contrib.muon's updates: kernels of either
  orientation by Muon at one rate, biases by Adam at the other, under a schedule."""
  rng = np.random.default_rng(0)
  shapes = {"down": (4, 4, 8, 16), "up": (4, 4, 16, 3), "bias": (16,)}
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  kernel_dims = lambda tree: jax.tree.map(
      lambda p: optax.contrib.MuonDimensionNumbers((0, 1, 2), (3,)) if p.ndim == 4 else None, tree)
  theirs = optax.contrib.muon(optax.cosine_decay_schedule(0.02, 10),
                              adam_learning_rate=optax.cosine_decay_schedule(3e-3, 10),
                              muon_weight_dimension_numbers=kernel_dims)
  ours = make_optimizer(Config(optimizer="muon", muon_learning_rate=0.02, learning_rate=3e-3,
                               lr_schedule="cosine", epochs=1), steps_per_epoch=10)

  def step(tx):  # Compiled, as in a run: one program per optimizer, not one per operation.
    def update(params, opt_state, grads):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    return jax.jit(update)

  ours_step, theirs_step = step(ours), step(theirs)
  ours_params, theirs_params = params, params
  ours_state, theirs_state = ours.init(params), theirs.init(params)
  for k in range(4):
    grads = {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()}
    ours_params, ours_state = ours_step(ours_params, ours_state, grads)
    theirs_params, theirs_state = theirs_step(theirs_params, theirs_state, grads)
  for name in shapes:
    assert not np.allclose(ours_params[name], params[name])
    np.testing.assert_allclose(ours_params[name], theirs_params[name], rtol=2e-5, atol=2e-6,
                               err_msg=name)


def test_muon_needs_its_own_rate_and_no_other_optimizer_takes_it():
  with pytest.raises(ValueError, match="^muon_learning_rate must be positive"):
    check_config(Config(optimizer="muon"))
  with pytest.raises(ValueError, match="^muon_learning_rate must be positive"):
    check_config(Config(muon_learning_rate=0.02))
  check_config(Config(optimizer="muon", muon_learning_rate=0.02))


def test_a_warmup_as_long_as_the_run_is_refused_by_the_optimizer_itself():
  """The schedule's owner refuses it (before, the run alone did, and a library caller got a
  schedule that never decayed)."""
  config = Config(lr_schedule="cosine", warmup_steps=8, epochs=2)
  with pytest.raises(ValueError, match="warmup_steps=8 is not smaller than the run's 8"):
    make_optimizer(config, steps_per_epoch=4)
  make_optimizer(config.replace(warmup_steps=7), steps_per_epoch=4)
