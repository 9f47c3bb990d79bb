"""TensorBoard event files of a training run, written with tensorboardX (no TensorFlow).

    tensorboard --logdir=runs/corrected/tensorboard

Layout: <workdir>/tensorboard/ for one seed; tensorboard/seed_<s>/ per replica of a run of
several seeds, so that TensorBoard overlays them as runs. The x axis is the optimizer step.

    train/loss          mean training loss over each window of `every` steps, at its last step
    train/epoch_loss    the epoch's mean training loss
    test/loss           the test loss after each epoch
    epoch/seconds       the epoch's wall time (training and test loss)
    test/predictions    8 test pairs as the task shows them (mean images and reconstructions,
                        or the sources and their estimates), after each epoch
    test_first_<n>/<metric>  the task's metrics (SSIM, PSNR, ...) on the first n test pairs
                        (1,000, or all if fewer), after each epoch
    final/<metric>      the task's final metrics (SSIM, PSNR, ...) at the last step

The per-step losses come back with the epoch's one compiled program (its scan's output), which the
run fetches anyway to stop a diverging run: logging them adds no device round trip. Events are
written where they are logged and `flush` puts them in the file (tensorboardX's SummaryWriter
queues them for a thread of its own, which a full disk stops for good while the queue blocks the
run, and which loses the queue on a kill): an error is an OSError here, and an epoch's events are
on disk once `epoch` returns.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Sequence

import numpy as np

from jaxae import extras
from jaxae.config import is_number


def grid(rows: Sequence[tuple[str, np.ndarray]], pad: int = 2) -> np.ndarray:
  """One image [H, W, 3] in [0, 1] of rows of images [K, h, w, 1 or 3]: examples left to right."""
  lines = []
  for _, images in rows:
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    cells = [np.pad(x, ((pad, pad), (pad, pad), (0, 0)), constant_values=1.0) for x in images]
    lines.append(np.concatenate(cells, axis=1))
  return np.concatenate(lines, axis=0)


class TensorBoard:
  """The event files of one run; `seeds` (of a run of several) gives each replica its own."""

  def __init__(self, logdir: str | os.PathLike, every: int, seeds: Sequence[int] | None = None,
               purge_step: int | None = None):
    """`purge_step`: the first step a resumed run trains again (restored step + 1); TensorBoard
    hides the events a killed run wrote from it on, so each step keeps one value."""
    if every <= 0:
      raise ValueError(f"every must be positive, got {every}.")
    self.every = every
    names = [""] if seeds is None or len(seeds) == 1 else [f"seed_{s}" for s in seeds]
    self._writers = [_EventFile(pathlib.Path(logdir) / name, purge_step) for name in names]

  @property
  def replicas(self) -> int:
    return len(self._writers)

  def epoch(self, *, first_step: int, step_losses: np.ndarray, train_loss, test_loss,
            seconds: float, previews: Sequence[Sequence[tuple[str, np.ndarray]]] = (),
            subset_metrics: Sequence[dict[str, Any]] = ()) -> None:
    """Logs one epoch that ran steps first_step + 1 .. first_step + S.

    step_losses: [S] (or [R, S] for R replicas) losses of its steps; train_loss, test_loss:
    scalars (or [R]); per replica, previews: the task's `preview_rows`, and subset_metrics: the
    task's `final_metrics` on the first test pairs (their "num_test_images" says how many).
    """
    losses = np.asarray(step_losses, np.float64).reshape(self.replicas, -1)
    last = first_step + losses.shape[1]
    train = np.asarray(train_loss, np.float64).reshape(-1)
    test = np.asarray(test_loss, np.float64).reshape(-1)
    for k, writer in enumerate(self._writers):
      for end in range(first_step - first_step % self.every + self.every, last + 1, self.every):
        window = losses[k, max(end - self.every, first_step) - first_step:end - first_step]
        writer.add_scalar("train/loss", float(window.mean()), end)
      writer.add_scalar("train/epoch_loss", float(train[k]), last)
      writer.add_scalar("test/loss", float(test[k]), last)
      writer.add_scalar("epoch/seconds", seconds, last)
      if k < len(previews):
        writer.add_image("test/predictions", grid(previews[k]), last)
      if k < len(subset_metrics):
        metrics = subset_metrics[k]
        for tag, value in metrics.items():  # Top level only: "trivial" never changes.
          if tag != "num_test_images" and is_number(value):
            writer.add_scalar(f"test_first_{metrics['num_test_images']}/{tag}", float(value),
                              last)
      writer.flush()

  def final(self, step: int, finals: Sequence[dict[str, Any]]) -> None:
    """The task's final metrics of each replica (plain numbers only; nested ones by path)."""
    for writer, final in zip(self._writers, finals):
      for tag, value in _numbers(final):
        writer.add_scalar(f"final/{tag}", value, step)
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


class _EventFile:
  """One event file in `logdir`, written synchronously (tensorboardX's EventsWriter)."""

  def __init__(self, logdir: pathlib.Path, purge_step: int | None):
    extras.load("tensorboardX", "run")  # One line naming the extra, if it is missing.
    from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto.event_pb2 import Event, SessionLog  # pylint: disable=g-import-not-at-top
    logdir.mkdir(parents=True, exist_ok=True)
    self._events = EventsWriter(str(logdir / "events"))
    self._event = Event
    if purge_step is not None:
      # What TensorBoard reads as "a restart at this step": it hides the earlier events from it on.
      self._events.write_event(Event(step=purge_step, file_version="brain.Event:2"))
      self._events.write_event(Event(step=purge_step,
                                     session_log=SessionLog(status=SessionLog.START)))

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    self._add(summary.scalar(tag, value), step)

  def add_image(self, tag: str, image_HWC: np.ndarray, step: int) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    self._add(summary.image(tag, image_HWC, dataformats="HWC"), step)

  def _add(self, summary, step: int) -> None:
    self._events.write_event(self._event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


def _numbers(d: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
  out = []
  for key, value in d.items():
    if isinstance(value, dict):
      out += _numbers(value, f"{prefix}{key}/")
    elif is_number(value):
      out.append((f"{prefix}{key}", float(value)))
  return out
