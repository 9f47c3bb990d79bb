"""Steps reported while a compiled epoch runs (jaxae/step_reports.py)."""

import jax
import numpy as np
import pytest

from conftest import tiny_splits
from jaxae import Config, create_train_state, loop, seeds, step_reports


def test_an_epoch_with_reports_computes_the_same_numbers_and_reports_every_step_count():
  config = Config(features=(4,))
  train, _ = tiny_splits(64, 8)
  heard = []
  reports = step_reports.every(1)
  plain = loop.train_epoch(create_train_state(jax.random.key(0), config), train.images, 1,
                           seed=0, batch_size=8)
  with reports.to(heard.append):
    reported = loop.train_epoch(create_train_state(jax.random.key(0), config), train.images, 1,
                                seed=0, batch_size=8, scan=reports.scan)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(reported)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # 8 steps, fewer than 100: every step reports, each before the listener is let go.
  assert sorted(heard) == list(range(1, 9))
  assert step_reports.interval(8) == 1 and step_reports.interval(1563) == 15


def test_chunks_and_the_remaining_steps_report_as_one_scan_computes():
  """Every 3 of 8 steps: two chunks reported (3, 6), then the last two steps unreported."""
  heard = []
  reports = step_reports.every(3)
  step = lambda total, x: (total + x, total * x)
  xs = np.arange(1.0, 9.0, dtype=np.float32)
  with reports.to(heard.append):
    got = jax.jit(lambda xs: reports.scan(step, 0.0, xs))(xs)
  want = jax.lax.scan(step, 0.0, xs)
  np.testing.assert_array_equal(got[1], want[1])
  assert float(got[0]) == float(want[0]) and heard == [3, 6]
  assert step_reports.every(3) is reports  # One per interval: its programs compile once.


@pytest.mark.slow
def test_vmapped_replicas_report_their_shared_steps_and_train_as_without():
  config = Config(features=(4,), num_seeds=2)
  train, _ = tiny_splits(32, 8)
  heard = []
  reports = step_reports.every(1)
  run = dict(seed=0, batch_size=8, strategy="vmap")
  with reports.to(heard.append):
    _, reported = seeds.over_replicas(loop.train_epoch, seeds.create_train_states(config),
                                      train.images, 1, scan=reports.scan, **run)
  _, plain = seeds.over_replicas(loop.train_epoch, seeds.create_train_states(config),
                                 train.images, 1, **run)
  np.testing.assert_array_equal(reported, plain)
  # One program steps both replicas: each of the 4 steps is reported.
  assert set(heard) == {1, 2, 3, 4}
