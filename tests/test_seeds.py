"""Many seeds in one program (jaxae/seeds.py): replica k computes the single-seed run seed + k."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_splits
from jaxae import Config, seeds
from jaxae.loop import compile_train_epoch, evaluate, train_epoch, train_full_batch_epoch
from jaxae.run.errors import RunError
from jaxae.run.train_and_evaluate import train_and_evaluate
from jaxae.steps import create_train_state

QUIET = lambda _: None
# One level of 4 channels: replicas are tested, not the model (its depth changes nothing here).
SMALL = dict(features=(4,), batch_size=16, epochs=2)


@pytest.mark.slow
def test_three_replicas_equal_three_single_seed_runs(tmp_path):
  train, test = tiny_splits(40, 12)
  config = Config(**SMALL, seed=5)
  many = train_and_evaluate(config.replace(num_seeds=3), train, test, tmp_path / "many",
                            log=QUIET)
  assert many["seeds"] == [5, 6, 7] and len(many["replicas"]) == 3
  for k, replica in enumerate(many["replicas"]):
    single = train_and_evaluate(config.replace(seed=5 + k), train, test, tmp_path / str(k),
                                log=QUIET)
    assert replica["seed"] == 5 + k
    np.testing.assert_allclose(
        [[h["train_loss"], h["test_loss"]] for h in replica["history"]],
        [[h["train_loss"], h["test_loss"]] for h in single["history"]], rtol=1e-5)
    for key in ("test_loss", "train_loss", "ssim_standard_mean", "psnr_original_mean"):
      assert replica["final"][key] == pytest.approx(single["final"][key], rel=1e-5), key
  # The replicas differ (their own initialization and shuffle), and "final" is their spread.
  losses = [r["final"]["test_loss"] for r in many["replicas"]]
  assert len(set(losses)) == 3
  spread = many["final"]["test_loss"]
  assert spread["mean"] == pytest.approx(np.mean(losses))
  assert spread["std"] == pytest.approx(np.std(losses, ddof=1))
  assert (spread["min"], spread["max"]) == (min(losses), max(losses))
  assert many["final"]["num_test_images"] == 12  # Equal in every replica: kept as it is.
  assert json.loads((tmp_path / "many" / "metrics.json").read_text())["final"] == many["final"]
  assert (tmp_path / "many" / "loss_curve.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("full_batch", [False, True])
def test_one_replica_computes_the_single_seeds_numbers_bitwise(full_batch):
  """A run holds one seed as a stacked state of one replica: its epochs (with and without
  progress reports) and its evaluation are the single seed's to the last bit, which is what
  reproduces the published single-seed runs. (Around the full-batch step, taking the axis off
  inside the program once moved an Adam update by an ulp.)"""
  train, test = tiny_splits(40, 12)
  config = Config(**SMALL, seed=3, full_batch=full_batch, conv_impl="gemm_vjp")
  plain = create_train_state(jax.random.key(3), config, steps_per_epoch=3)
  stacked = seeds.create_train_states(config, steps_per_epoch=3)
  examples = plain.task.examples(train)
  for epoch in (1, 2):
    if full_batch:
      one = train_full_batch_epoch(plain, examples)
      many = train_full_batch_epoch(stacked, examples, replicas=1)
    else:
      progress = (lambda *_, **__: None) if epoch == 2 else None
      run = dict(seed=3, epoch=epoch, batch_size=config.batch_size, progress=progress)
      one = train_epoch(plain, examples, **run)
      many = train_epoch(stacked, examples, replicas=1, **run)
    plain, stacked = one.state, many.state
    assert many.loss.tolist() == [one.loss]
    np.testing.assert_array_equal(many.step_losses, one.step_losses[None])
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(stacked)):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a)[None])
  alone = evaluate(plain, plain.task.examples(test), batch_size=8)
  evaluated = evaluate(stacked, plain.task.examples(test), batch_size=8, replicas=1)
  assert evaluated["loss"].tolist() == [alone["loss"]]
  for key in ("per_example_loss", "reconstructions"):
    np.testing.assert_array_equal(evaluated[key], alone[key][None])


# "loop" with minibatches is what every CPU run of several seeds does (the tests above).
@pytest.mark.slow
@pytest.mark.parametrize("mode,strategy", [("minibatch", "vmap"), ("full_batch", "vmap"),
                                           ("full_batch", "loop"), ("separate_unet", "vmap")])
def test_replicas_train_and_evaluate_like_single_seeds(mode, strategy):
  """Both ways of running replicas (one vmapped program, or the single-seed one per replica),
  for both procedures, tasks and models."""
  train, test = tiny_splits(24, 8)
  config = Config(**SMALL, seed=3, num_seeds=2, full_batch=mode == "full_batch")
  if mode.startswith("separate"):
    config = config.replace(task="separate", model="unet", features=(4, 8), batch_size=8)
  stacked = seeds.create_train_states(config, steps_per_epoch=3)
  singles = [create_train_state(jax.random.key(s), config, steps_per_epoch=3) for s in (3, 4)]
  examples = stacked.task.examples(train)

  def epoch(state, seed, replicas=0):
    if config.full_batch:
      return train_full_batch_epoch(state, examples, replicas=replicas,
                                    replica_strategy=strategy)
    return train_epoch(state, examples, seed=seed, epoch=1, batch_size=config.batch_size,
                       replicas=replicas, microbatch_per_device=4, replica_strategy=strategy)

  many = epoch(stacked, 3, replicas=2)
  ones = [epoch(state, seed) for state, seed in zip(singles, (3, 4))]
  np.testing.assert_allclose(many.step_losses, [o.step_losses for o in ones], rtol=1e-5)
  np.testing.assert_allclose(many.loss, [o.loss for o in ones], rtol=1e-5)
  evaluated = evaluate(many.state, stacked.task.examples(test), batch_size=3, replicas=2,
                       replica_strategy=strategy)
  for k, one in enumerate(ones):
    alone = evaluate(one.state, stacked.task.examples(test), batch_size=3)
    assert evaluated["loss"][k] == pytest.approx(alone["loss"], rel=1e-5)
    for key, value in alone.items():
      if key != "loss":
        np.testing.assert_allclose(evaluated[key][k], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_diverging_replica_is_named_with_its_epoch_and_step(tmp_path):
  train, test = tiny_splits(40, 12)
  # Three levels: at this rate they diverge in the first epoch (one level stays finite).
  config = Config(**SMALL, seed=7, num_seeds=2, learning_rate=1e6).replace(features=(4, 8, 8))
  with pytest.raises(RunError, match=r"diverged: replica 0 \(seed 7\).*epoch 1, step \d+ of 3"):
    train_and_evaluate(config, train, test, tmp_path, log=QUIET)
  assert not (tmp_path / "checkpoints" / "1").exists()
  # The earliest bad step wins, then the lowest replica at that step.
  losses = np.array([[1.0, 1.0, np.nan], [1.0, np.inf, np.nan]])
  assert seeds.first_non_finite(losses) == (1, 1)
  assert seeds.first_non_finite(np.array([[1.0, np.nan]])) == (1, 0)
  assert seeds.first_non_finite(np.ones((2, 3))) is None


@pytest.mark.slow
def test_compile_train_epoch_compiles_the_program_train_epoch_runs():
  """For a run's stacked state of one replica: the single-seed program (benchmark.py times it)."""
  compiles = []

  def listen(event, duration, **_):  # pylint: disable=unused-argument
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    train, _ = tiny_splits(40, 12)
    config = Config(**SMALL)
    state = seeds.create_train_states(config, steps_per_epoch=3)
    examples = state.task.examples(train)
    train_epoch(seeds.create_train_states(config, steps_per_epoch=3), examples, seed=0, epoch=1,
                batch_size=16, replicas=1)
    compiles.clear()
    compile_train_epoch(state, examples, batch_size=16, replicas=1)
    assert not compiles  # Found in the cache that train_epoch filled.
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def test_the_removed_helpers_name_their_replacements():
  with pytest.raises(AttributeError, match="initial_state was removed; use create_train_states"):
    seeds.initial_state  # pylint: disable=pointless-statement
  with pytest.raises(AttributeError, match="replicas_of was removed; use config.num_seeds"):
    seeds.replicas_of  # pylint: disable=pointless-statement
  with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
    seeds.nonexistent  # pylint: disable=pointless-statement


def test_num_seeds_must_be_positive_and_fit_the_seed_range():
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ValueError, match="num_seeds must be a positive integer"):
      Config(num_seeds=bad).validate()
  with pytest.raises(ValueError, match="num_seeds must be at most"):
    Config(seed=2 ** 32 - 2, num_seeds=3).validate()
  Config(seed=2 ** 32 - 3, num_seeds=3).validate()

