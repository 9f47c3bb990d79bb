import asyncio
import errno
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, flip_a_stored_bit
from jaxae import Config, create_train_state, train_step
from jaxae.run.checkpoints import (CheckpointSaveError, Checkpointer, IncompatibleCheckpointError,
                               NoUsableCheckpointError)


# The checkpoints' model: two small levels (what is under test is the saving, restoring and
# checking of a TrainState, not its size), which compile in a fraction of the original model's
# time.
CONFIG = Config(features=(4, 8))


def _saved_run(directory, epochs=3, config=CONFIG):
  state = create_train_state(jax.random.key(0), config)
  images = jnp.ones((2, 32, 32, 3))
  checkpointer = Checkpointer(directory)
  history = []
  for epoch in range(1, epochs + 1):
    state, m = jax.jit(train_step)(state, images)
    history.append({"epoch": epoch, "train_loss": float(m["loss"])})
    checkpointer.save(epoch, state, history, provenance={"jax": jax.__version__})
  checkpointer.close()
  return state, history


def _truncate(step_dir: pathlib.Path):
  for f in step_dir.rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _largest_state_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((f for f in (step_dir / "state").rglob("*") if f.is_file()),
             key=lambda f: f.stat().st_size)


def _restore(directory, config=CONFIG):
  checkpointer = Checkpointer(directory)
  try:
    return checkpointer.restore_latest(create_train_state(jax.random.key(9), config))
  finally:
    checkpointer.close()


@pytest.mark.slow
def test_restore_returns_the_saved_state_history_and_provenance(tmp_path):
  state, history = _saved_run(tmp_path / "checkpoints")
  restored = _restore(tmp_path / "checkpoints")
  assert restored.epoch == 3 and restored.history == history and int(restored.state.step) == 3
  assert restored.provenance == {"jax": jax.__version__} and restored.damaged == []
  for a, b in zip(jax.tree.leaves(restored.state.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["bit_flip", "overwrite_1kb"])
def test_checkpoint_damaged_in_place_is_detected_by_its_checksum(tmp_path, damage):
  """A bit flipped in a stored array: orbax reads the step without complaint, and only the stored
  SHA-256 of the state tells. A kilobyte overwritten a third into the largest file of the state
  (10 KB: array data, or orbax's index beside it): damaged either way."""
  directory = tmp_path / "checkpoints"
  _saved_run(directory)
  if damage == "bit_flip":
    flip_a_stored_bit(directory / "3")
  else:
    data = _largest_state_file(directory / "3")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3:len(raw) // 3 + 1024] = np.random.default_rng(0).bytes(1024)
    data.write_bytes(bytes(raw))
  restored = _restore(directory)
  assert restored.epoch == 2 and len(restored.history) == 2
  assert len(restored.damaged) == 1
  if damage == "bit_flip":  # Readable, so only the checksum can tell.
    assert "checksum" in restored.damaged[0]


def test_damaged_newest_step_is_moved_aside_and_its_epoch_saved_again(tmp_path):
  directory = tmp_path / "checkpoints"
  _saved_run(directory)
  _truncate(directory / "3")
  restored = _restore(directory)
  assert restored.epoch == 2
  assert str(directory / "3") in restored.damaged[0]
  assert not (directory / "3").exists()
  assert (tmp_path / "damaged_checkpoints" / "3").is_dir()  # Kept, not deleted.
  # The run goes on: epoch 3's checkpoint is written again, and it is the one restored next.
  checkpointer = Checkpointer(directory)
  checkpointer.save(3, restored.state, restored.history + [{"epoch": 3}])
  assert checkpointer.steps() == [1, 2, 3]
  checkpointer.close()
  assert _restore(directory).epoch == 3


def test_damaged_warning_is_one_line_without_library_tracebacks(tmp_path, capfd):
  directory = tmp_path / "checkpoints"
  _saved_run(directory)
  capfd.readouterr()
  _truncate(directory / "3")
  restored = _restore(directory)
  out, err = capfd.readouterr()
  assert "Traceback" not in out + err and len((out + err).strip().splitlines()) <= 1
  assert len(restored.damaged) == 1 and "\n" not in restored.damaged[0]


def test_no_restorable_checkpoint_is_an_error_nothing_moved_and_none_is_none(tmp_path):
  directory = tmp_path / "checkpoints"
  _saved_run(directory, epochs=2)
  for step in ("1", "2"):
    _truncate(directory / step)
  with pytest.raises(NoUsableCheckpointError):
    _restore(directory)
  assert (directory / "1").is_dir() and (directory / "2").is_dir()
  assert not (tmp_path / "damaged_checkpoints").exists()
  assert _restore(tmp_path / "empty") is None


@pytest.mark.slow
def test_incompatible_checkpoint_is_not_called_damaged_and_not_moved(tmp_path):
  """Another model's state (as after a code change that renamed or resized parameters)."""
  directory = tmp_path / "checkpoints"
  _saved_run(directory, epochs=1)  # The file's model; a wider one restores it.
  with pytest.raises(IncompatibleCheckpointError) as e:
    _restore(directory, Config(features=(8, 16)))
  message = str(e.value)
  assert "not damaged" in message and "delete" in message
  assert "['params']['dec0']['bias'] is [4] float32, the model's [8] float32" in message
  assert (directory / "1").is_dir() and not (tmp_path / "damaged_checkpoints").exists()


def test_leftover_folders_are_cleaned_before_the_checkpointer_is_returned(tmp_path, monkeypatch):
  """orbax cleans leftover temporary folders in a thread joined only at the first save; a script
  that exited before one (`| head -1` closed its output) met that thread at interpreter shutdown
  and printed a traceback after its one-line error (CI, test_scripts)."""
  from orbax.checkpoint._src.path import temporary_paths  # pylint: disable=g-import-not-at-top
  done = []

  async def slow_cleanup(*args, **kwargs):
    del args, kwargs
    await asyncio.sleep(0.5)
    done.append(True)

  monkeypatch.setattr(temporary_paths, "cleanup_temporary_paths", slow_cleanup)
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  assert done == [True]
  checkpointer.close()


def test_refused_save_raises(tmp_path):
  directory = tmp_path / "checkpoints"
  state, history = _saved_run(directory, epochs=2)
  checkpointer = Checkpointer(directory)
  with pytest.raises(CheckpointSaveError, match="epoch 1"):
    checkpointer.save(1, state, history[:1])  # Older than the newest step: orbax says no.
  checkpointer.close()


def test_full_disk_while_saving_raises_one_clear_error(tmp_path, monkeypatch):
  directory = tmp_path / "checkpoints"
  state, history = _saved_run(directory, epochs=1)
  checkpointer = Checkpointer(directory)

  def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(checkpointer._manager, "save", no_space)  # pylint: disable=protected-access
  with pytest.raises(CheckpointSaveError, match="epoch 2.*No space left on device"):
    checkpointer.save(2, state, history + [{"epoch": 2}])
  checkpointer.close()
  assert _restore(directory).epoch == 1  # The earlier step is untouched.


@pytest.mark.parametrize("wrapping", ["chained", "in_the_text"])
def test_a_full_disk_wrapped_in_long_messages_is_still_named(tmp_path, monkeypatch, wrapping):
  # Orbax raises its own errors around the OSError, with tracebacks longer than a line can hold.
  directory = tmp_path / "checkpoints"
  state, history = _saved_run(directory, epochs=1)
  checkpointer = Checkpointer(directory)
  preamble = "Failed to commit the step to /some/where: " + "x" * 400 + "\nTraceback ...\n"

  def no_space(*args, **kwargs):
    if wrapping == "chained":
      try:
        raise OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/2/state")
      except OSError as e:
        raise RuntimeError(preamble) from e
    raise ValueError(preamble + "OSError: [Errno 28] No space left on device: '/w/x'")

  monkeypatch.setattr(checkpointer._manager, "save", no_space)  # pylint: disable=protected-access
  with pytest.raises(CheckpointSaveError, match="No space left on device") as raised:
    checkpointer.save(2, state, history + [{"epoch": 2}])
  assert "\n" not in str(raised.value) and len(str(raised.value)) < 400
  checkpointer.close()


@pytest.fixture
def sigint_handler():
  """Sets the SIGINT handler a test names and restores the one before: a worker's handler is
  whatever the process had, and a test that depends on it passes or fails by where it runs."""
  before = signal.getsignal(signal.SIGINT)
  yield lambda handler: signal.signal(signal.SIGINT, handler)
  signal.signal(signal.SIGINT, before)


def _save_with_a_ctrl_c(tmp_path, monkeypatch):
  """(a checkpointer whose next save gets a Ctrl-C while orbax writes, the state, the history)."""
  directory = tmp_path / "checkpoints"
  state, history = _saved_run(directory, epochs=1)
  checkpointer = Checkpointer(directory)
  real_save = checkpointer._manager.save  # pylint: disable=protected-access

  def interrupted_save(*args, **kwargs):
    # Ctrl-C while orbax writes: the Python-level SIGINT handler in force is called, as CPython
    # calls it when the signal reaches the main thread. Not an OS signal: sent with os.kill it
    # may reach any of orbax's, tensorstore's or XLA's ~30 threads. What is under test is the
    # deferral: the handler in force during a write records the Ctrl-C, and it takes effect once
    # the step is complete. A script's real Ctrl-C is tested in a subprocess
    # (tests/test_scripts.py).
    handler = signal.getsignal(signal.SIGINT)
    assert callable(handler) and handler is not signal.default_int_handler  # Deferred.
    handler(signal.SIGINT, None)
    return real_save(*args, **kwargs)

  monkeypatch.setattr(checkpointer._manager, "save", interrupted_save)  # pylint: disable=protected-access
  return checkpointer, state, history


def test_ctrl_c_during_a_write_takes_effect_once_the_step_is_complete(tmp_path, monkeypatch,
                                                                      sigint_handler):
  sigint_handler(signal.default_int_handler)  # Python's own: Ctrl-C raises KeyboardInterrupt.
  checkpointer, state, history = _save_with_a_ctrl_c(tmp_path, monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    checkpointer.save(2, state, history + [{"epoch": 2}])
  checkpointer.close()
  assert _restore(tmp_path / "checkpoints").epoch == 2  # Written whole before the interrupt.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_deferred_ctrl_c_does_what_the_handler_before_the_write_does(tmp_path, monkeypatch,
                                                                       sigint_handler):
  """A caller's own handler hears the Ctrl-C once, after the step is whole; an ignored Ctrl-C
  stays ignored. (Before, any handler that was not a Python callable lost it.)"""
  heard = []
  directory = tmp_path / "checkpoints"
  own = lambda signum, frame: heard.append(sorted(int(p.name) for p in directory.iterdir()
                                                  if p.name.isdigit()))
  sigint_handler(own)
  checkpointer, state, history = _save_with_a_ctrl_c(tmp_path, monkeypatch)
  checkpointer.save(2, state, history + [{"epoch": 2}])
  assert heard == [[1, 2]] and signal.getsignal(signal.SIGINT) is own
  sigint_handler(signal.SIG_IGN)
  checkpointer.save(3, state, history + [{"epoch": 2}, {"epoch": 3}])
  checkpointer.close()
  assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN and _restore(directory).epoch == 3


@pytest.mark.slow
def test_a_deferred_ctrl_c_under_the_default_action_ends_the_process_after_the_write(tmp_path):
  """SIG_DFL before the write (a process that never installed Python's handler): the Ctrl-C
  ends the process, as it would have, once the step is written."""
  script = (
      "import signal, sys\n"
      "import jax, jax.numpy as jnp\n"
      "from jaxae.run import checkpoints\n"
      "from jaxae import Config\n"
      "from jaxae.steps import create_train_state\n"
      "state = create_train_state(jax.random.key(0), Config(features=(4, 8)))\n"
      "ckpt = checkpoints.Checkpointer(sys.argv[1])\n"
      "real = ckpt._manager.save\n"
      "def save(*a, **k):\n"
      "  signal.getsignal(signal.SIGINT)(signal.SIGINT, None)\n"
      "  return real(*a, **k)\n"
      "ckpt._manager.save = save\n"
      "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
      "ckpt.save(1, state, [{'epoch': 1}])\n"
      "print('went on after Ctrl-C', flush=True)\n")
  run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "checkpoints")],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert run.returncode == -signal.SIGINT, (run.returncode, run.stderr[-2000:])
  assert "went on" not in run.stdout
  assert _restore(tmp_path / "checkpoints").epoch == 1


def _edit_metadata(step_dir: pathlib.Path, edit) -> None:
  """Rewrites the step's stored metadata (history, structure, checksums) through `edit`."""
  path = next(f for f in (step_dir / "history").rglob("*") if f.is_file())
  path.write_text(edit(path.read_text()))


@pytest.mark.parametrize("edit", [
    # One digit of the first epoch's loss: the history (what metrics.json reports) is checked too.
    lambda text: text.replace('"train_loss": ', '"train_loss": 9', 1),
    # A dtype in the stored structure: damage, not another model's state.
    lambda text: text.replace("float32", "float33", 1),
], ids=["history", "structure"])
def test_edited_metadata_is_damage_caught_by_its_checksum(tmp_path, edit):
  directory = tmp_path / "checkpoints"
  _, history = _saved_run(directory)
  _edit_metadata(directory / "3", edit)
  restored = _restore(directory)
  assert restored.epoch == 2 and restored.history == history[:2]
  assert len(restored.damaged) == 1 and "checksum" in restored.damaged[0]
  assert (tmp_path / "damaged_checkpoints" / "3").is_dir()  # Moved aside, kept.
