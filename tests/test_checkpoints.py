import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import create_train_state, train_step
from jaxae.checkpoints import Checkpointer, NoUsableCheckpointError


def _saved_run(directory, epochs=3):
  state = create_train_state(jax.random.key(0))
  images = jnp.ones((2, 32, 32, 3))
  checkpointer = Checkpointer(directory)
  history = []
  for epoch in range(1, epochs + 1):
    state, m = jax.jit(train_step)(state, images)
    history.append({"epoch": epoch, "train_loss": float(m["loss"])})
    checkpointer.save(epoch, state, history)
  checkpointer.close()
  return state, history


def _damage(step_dir: pathlib.Path):
  for f in step_dir.rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_restore_returns_the_saved_state_and_history(tmp_path):
  state, history = _saved_run(tmp_path)
  epoch, restored, restored_history = Checkpointer(tmp_path).restore_latest(
      create_train_state(jax.random.key(9)))
  assert epoch == 3 and restored_history == history and int(restored.step) == 3
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  _saved_run(tmp_path)
  _damage(tmp_path / "3")
  epoch, _, history = Checkpointer(tmp_path).restore_latest(create_train_state(jax.random.key(0)))
  assert epoch == 2 and len(history) == 2
  assert any(str(tmp_path / "3") in r.getMessage() for r in caplog.records)
  assert (tmp_path / "3").exists()  # Nothing is deleted.


def test_no_restorable_checkpoint_is_an_error_and_none_is_none(tmp_path):
  _saved_run(tmp_path, epochs=2)
  for step in ("1", "2"):
    _damage(tmp_path / step)
  with pytest.raises(NoUsableCheckpointError):
    Checkpointer(tmp_path).restore_latest(create_train_state(jax.random.key(0)))
  assert Checkpointer(tmp_path / "empty").restore_latest(create_train_state(jax.random.key(0))) is None
