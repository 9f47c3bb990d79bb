"""TensorBoard event files of a run (jaxae/report/tensorboard.py), read back as TensorBoard reads
them."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from conftest import REPO, tiny_splits
from jaxae import Config
from jaxae.run.errors import RunError
from jaxae.report.tensorboard import grid
from jaxae.run.train_and_evaluate import train_and_evaluate


def _events(folder):
  """Events of every event file in `folder`, in writing order, with TensorBoard's purge rule: a
  session restarting at step T hides the events at steps >= T written before it."""
  events = []
  for path in sorted(folder.glob("events.out.tfevents.*")):
    raw = path.read_bytes()
    at = 0
    while at < len(raw):
      (length,) = struct.unpack("<Q", raw[at:at + 8])
      events.append(event_pb2.Event.FromString(raw[at + 12:at + 12 + length]))
      at += 12 + length + 4
  kept = []
  for e in events:
    if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
      kept = [k for k in kept if k.step < e.step]
    kept.append(e)
  return kept


def _scalars(folder):
  out = {}
  for e in _events(folder):
    for v in e.summary.value:
      if v.HasField("simple_value"):
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


def _images(folder):
  return [(e.step, v.image) for e in _events(folder) for v in e.summary.value
          if v.HasField("image")]


@pytest.mark.slow
def test_a_run_logs_losses_every_n_steps_test_metrics_and_predictions(tmp_path):
  train, test = tiny_splits(40, 12)  # Batch 16: 3 steps per epoch.
  metrics = train_and_evaluate(Config(epochs=2, batch_size=16, features=(4, 8)), train, test,
                               tmp_path, log=lambda _: None, tensorboard_every=2)
  scalars = _scalars(tmp_path / "tensorboard")
  assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]
  history = metrics["history"]
  for tag, key in (("train/epoch_loss", "train_loss"), ("test/loss", "test_loss")):
    assert [s for s, _ in scalars[tag]] == [3, 6]
    np.testing.assert_allclose([v for _, v in scalars[tag]], [h[key] for h in history], rtol=1e-6)
  for name in ("test_loss", "psnr_standard_mean", "ssim_original_mean"):
    assert scalars[f"final/{name}"] == [(6, pytest.approx(metrics["final"][name], rel=1e-6))]
  # Each epoch, the task's metrics on the first test pairs (here all 12): after the last epoch
  # they are the final ones.
  for name in ("psnr_standard_mean", "ssim_original_mean", "ssim_standard_mean"):
    steps, values = zip(*scalars[f"test_first_12/{name}"])
    assert steps == (3, 6) and values[1] == pytest.approx(metrics["final"][name], rel=1e-5)
  images = _images(tmp_path / "tensorboard")
  assert [s for s, _ in images] == [3, 6]
  # 2 rows (mean images, reconstructions) of 8 test pairs, 32 px + 2 px of padding each side.
  assert (images[0][1].height, images[0][1].width) == (2 * 36, 8 * 36)


@pytest.mark.slow
def test_each_seed_gets_its_own_run_and_a_resumed_run_hides_what_it_trains_again(tmp_path):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  train, test = tiny_splits(32, 4)
  config = Config(epochs=1, batch_size=16, features=(4, 8), num_seeds=2, seed=3)
  train_and_evaluate(config, train, test, tmp_path, log=lambda _: None, tensorboard_every=1)
  # A run killed during epoch 2 had logged its first step; the resumed run trains it again.
  with SummaryWriter(str(tmp_path / "tensorboard" / "seed_3")) as killed:
    killed.add_scalar("train/loss", 123.0, 3)
  metrics = train_and_evaluate(config.replace(epochs=2), train, test, tmp_path,
                               log=lambda _: None, tensorboard_every=1)
  assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["seed_3", "seed_4"]
  for k, seed in enumerate((3, 4)):
    scalars = _scalars(tmp_path / "tensorboard" / f"seed_{seed}")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert 123.0 not in [v for _, v in scalars["train/loss"]]
    np.testing.assert_allclose([v for _, v in scalars["test/loss"]],
                               [h["test_loss"] for h in metrics["replicas"][k]["history"]],
                               rtol=1e-6)
    # Each replica logs its own metrics.
    assert scalars["test_first_4/psnr_standard_mean"][-1][1] == pytest.approx(
        metrics["replicas"][k]["final"]["psnr_standard_mean"], rel=1e-5)


@pytest.mark.slow
def test_overwrite_removes_the_event_files_and_nothing_else(tmp_path):
  train, test = tiny_splits(16, 4)
  config = Config(epochs=1, batch_size=16, features=(4, 8))
  train_and_evaluate(config, train, test, tmp_path, log=lambda _: None, tensorboard_every=1)
  (tmp_path / "tensorboard" / "notes.txt").write_text("mine")
  train_and_evaluate(config.replace(learning_rate=1e-2), train, test, tmp_path,
                     log=lambda _: None, overwrite=True)  # No TensorBoard this time.
  assert [p.name for p in (tmp_path / "tensorboard").iterdir()] == ["notes.txt"]


def test_grid_tiles_rows_of_grey_and_colour_images():
  grey = np.zeros((3, 4, 4, 1))
  colour = np.ones((3, 4, 4, 3)) * 2.0  # Clipped to 1.
  out = grid([("a", grey), ("b", colour)], pad=1)
  assert out.shape == (2 * 6, 3 * 6, 3)
  assert out[1:5, 1:5].max() == 0.0 and out[7:11, 1:5].min() == 1.0


# A run in a process of its own that ends as `how` says: "killed" right after its first
# checkpoint (os._exit, as kill -9), or "disk_full" from its fourth event record on.
_ENDING_RUN = """
import errno, os, sys
from conftest import tiny_splits
from jaxae import Config
from jaxae.run import checkpoints
from jaxae.run.errors import RunError
from jaxae.run.train_and_evaluate import train_and_evaluate
from tensorboardX import record_writer

workdir, how = sys.argv[1:]
if how == "killed":
  save = checkpoints.Checkpointer.save
  def save_then_die(self, epoch, *args, **kwargs):
    save(self, epoch, *args, **kwargs)
    if epoch == 1:
      os._exit(9)
  checkpoints.Checkpointer.save = save_then_die
else:
  write, written = record_writer.RecordWriter.write, []
  def write_until_full(self, data):
    written.append(data)
    if len(written) > 3:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write(self, data)
  record_writer.RecordWriter.write = write_until_full
train, test = tiny_splits(40, 12)
try:
  train_and_evaluate(Config(epochs=2, batch_size=16, features=(4,)), train, test, workdir,
                     log=lambda _: None, tensorboard_every=1)
except RunError as e:
  sys.exit(f"error: {e}")
"""


def _ending_run(tmp_path, how):
  return subprocess.run([sys.executable, "-c", _ENDING_RUN, str(tmp_path / "w"), how],
                        capture_output=True, text=True, timeout=300, cwd=REPO / "tests",
                        env=dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{REPO}"))


@pytest.mark.slow
def test_a_kill_after_a_checkpoint_keeps_that_epochs_events_and_the_resumed_run_adds_the_rest(
    tmp_path):
  """Before: the events were queued after the checkpoint and flushed every 30 s, so a kill then
  lost the completed epoch's events for good (the resumed run does not train it again)."""
  killed = _ending_run(tmp_path, "killed")
  assert killed.returncode == 9, killed.stderr[-2000:]
  assert (tmp_path / "w" / "checkpoints" / "1").is_dir()
  scalars = _scalars(tmp_path / "w" / "tensorboard")
  assert [s for s, _ in scalars["train/epoch_loss"]] == [3]
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
  train, test = tiny_splits(40, 12)
  train_and_evaluate(Config(epochs=2, batch_size=16, features=(4,)), train, test, tmp_path / "w",
                     log=lambda _: None, tensorboard_every=1)
  scalars = _scalars(tmp_path / "w" / "tensorboard")
  assert [s for s, _ in scalars["train/epoch_loss"]] == [3, 6]
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_a_full_disk_under_the_event_files_is_one_line_not_a_hang(tmp_path):
  """Before: tensorboardX's writer thread died on the OSError and the run blocked forever on
  its full queue."""
  full = _ending_run(tmp_path, "disk_full")
  assert full.returncode == 1
  assert full.stderr.strip().splitlines()[-1] == (
      f"error: could not write {tmp_path / 'w' / 'tensorboard'} (No space left on device); the "
      "checkpoints are intact: fix that (free disk space) and run the same command again.")
  assert "Traceback" not in full.stderr


def test_an_unwritable_event_folder_is_one_line_before_training(tmp_path):
  (tmp_path / "tensorboard").write_text("not a folder")
  train, test = tiny_splits(40, 12)
  with pytest.raises(RunError, match=r"cannot write TensorBoard events into .*tensorboard \(.*\); "
                                     r"pass --log_every_steps=0"):
    train_and_evaluate(Config(epochs=1, batch_size=16, features=(4,)), train, test, tmp_path,
                       log=lambda _: None, tensorboard_every=1)
  assert not (tmp_path / "checkpoints" / "1").exists()  # Refused before any epoch.
