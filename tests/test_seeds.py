"""Many seeds in one program (jaxae/seeds.py): replica k computes the single-seed run seed + k."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_splits
from jaxae import Config, loop, parallel, platforms, seeds, step_reports
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


def _epoch(state, examples, config, strategy=None, **kwargs):
  """One epoch of a plain state, or with `strategy` of a stacked one: (state, step losses)."""
  if config.full_batch:
    fn, args, kwargs = loop.full_batch_step, (examples,), {"chunk_size": 16, **kwargs}
  else:
    fn, args = loop.train_epoch, (examples, 1)
    kwargs = {"seed": config.seed, "batch_size": config.batch_size, **kwargs}
  if strategy is None:
    return fn(state, *args, **kwargs)
  return seeds.over_replicas(fn, state, *args, strategy=strategy, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("full_batch", [False, True])
def test_one_replica_computes_the_single_seeds_numbers_bitwise(full_batch):
  """A run holds one seed as a stacked state of one replica: its epochs (with and without
  progress reports) and its evaluation are the single seed's to the last bit, which is what
  reproduces the published single-seed runs."""
  train, test = tiny_splits(40, 12)
  config = Config(**SMALL, seed=3, full_batch=full_batch, conv_impl="gemm_vjp")
  plain = create_train_state(jax.random.key(3), config, steps_per_epoch=3)
  stacked = seeds.create_train_states(config, steps_per_epoch=3)
  strategy = platforms.replica_strategy("gpu", 1)  # One replica: the single seed's program.
  examples = plain.task.examples(train)
  for epoch in (1, 2):
    reports = {} if full_batch or epoch == 1 else {"scan": step_reports.every(1).scan}
    plain, one = _epoch(plain, examples, config, **reports)
    stacked, many = _epoch(stacked, examples, config, strategy, **reports)
    np.testing.assert_array_equal(np.asarray(many), np.asarray(one)[None])
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(stacked)):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a)[None])
  alone = loop.evaluate(plain, plain.task.examples(test), batch_size=8)
  evaluated = seeds.over_replicas(loop.evaluate, stacked, plain.task.examples(test),
                                  strategy=strategy, batch_size=8)
  for key in ("per_example_loss", "reconstructions"):
    np.testing.assert_array_equal(np.asarray(evaluated[key]), np.asarray(alone[key])[None])


# "loop" with minibatches is what every CPU run of several seeds does (the tests above).
@pytest.mark.slow
@pytest.mark.parametrize("mode,strategy", [("minibatch", "vmap"), ("full_batch", "vmap"),
                                           ("full_batch", "loop"), ("separate_unet", "vmap")])
def test_replicas_train_and_evaluate_like_single_seeds(mode, strategy):
  """Both ways of running replicas (one vmapped program, or the single-seed one per replica),
  for both procedures, tasks and models: replica k is the single seed seed + k."""
  train, test = tiny_splits(24, 8)
  config = Config(**SMALL, seed=3, num_seeds=2, full_batch=mode == "full_batch")
  if mode.startswith("separate"):
    config = config.replace(task="separate", model="unet", features=(4, 8), batch_size=8)
  stacked = seeds.create_train_states(config, steps_per_epoch=3)
  singles = [create_train_state(jax.random.key(s), config, steps_per_epoch=3) for s in (3, 4)]
  examples = stacked.task.examples(train)
  micro = {} if config.full_batch else {"microbatch_per_device": 4}
  many, many_losses = _epoch(stacked, examples, config, strategy, **micro)
  ones = [_epoch(state, examples, config.replace(seed=seed), **micro)
          for state, seed in zip(singles, (3, 4))]
  np.testing.assert_allclose(many_losses, [losses for _, losses in ones], rtol=1e-5)
  evaluated = seeds.over_replicas(loop.evaluate, many, stacked.task.examples(test),
                                  strategy=strategy, batch_size=3)
  for k, (one, _) in enumerate(ones):
    alone = loop.evaluate(one, stacked.task.examples(test), batch_size=3)
    for key, value in alone.items():
      np.testing.assert_allclose(evaluated[key][k], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_vmapped_replicas_compile_once_for_every_epoch():
  """The lifted program takes the epoch as an argument: epoch 2 compiles nothing."""
  train, _ = tiny_splits(24, 8)
  config = Config(**SMALL, num_seeds=2)
  # Placed as the run places it (and as the program returns it): a new placement would compile.
  state = parallel.replicate(seeds.create_train_states(config, steps_per_epoch=2),
                             parallel.data_mesh())
  compiles = []

  def listen(event, duration, **_):  # pylint: disable=unused-argument
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)
  run = dict(seed=0, strategy="vmap", batch_size=16)
  state, _ = seeds.over_replicas(loop.train_epoch, state, train.images, 1, **run)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    jax.block_until_ready(seeds.over_replicas(loop.train_epoch, state, train.images, 2, **run))
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert not compiles


def test_over_replicas_refuses_an_unknown_strategy():
  state = seeds.create_train_states(Config(**SMALL), steps_per_epoch=1)
  with pytest.raises(ValueError, match="strategy must be 'vmap' or 'loop', got 'threads'"):
    seeds.over_replicas(loop.evaluate, state, np.zeros((1, 32, 32, 3), np.float32),
                        strategy="threads", batch_size=1)


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


def test_num_seeds_must_be_positive_and_fit_the_seed_range():
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ValueError, match="num_seeds must be a positive integer"):
      Config(num_seeds=bad).validate()
  with pytest.raises(ValueError, match="num_seeds must be at most"):
    Config(seed=2 ** 32 - 2, num_seeds=3).validate()
  Config(seed=2 ** 32 - 3, num_seeds=3).validate()

