"""Results fetched without blocking Ctrl-C (jaxae/run/interruptible.py)."""

import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae.run.interruptible import fetch


@pytest.mark.slow
def test_waiting_for_an_epoch_lets_a_signal_handler_run_before_it_ends():
  """The host waits for an epoch's results in short sleeps, not inside XLA, so Ctrl-C's handler
  runs while the program still computes (here a timer's signal, 20 ms into a ~1 s program)."""
  @jax.jit
  def slow(x):
    return jax.lax.fori_loop(0, 200, lambda i, a: jnp.tanh(a @ a), x).sum()

  x = jnp.ones((512, 512)) / 512
  slow(x).block_until_ready()  # Compiled before the timing starts.
  result = slow(x)
  ready_when_handled = []
  previous = signal.signal(signal.SIGALRM, lambda *_: ready_when_handled.append(result.is_ready()))
  try:
    signal.setitimer(signal.ITIMER_REAL, 0.02)
    value = fetch(result)
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  assert ready_when_handled == [False]
  assert value == np.asarray(result)
