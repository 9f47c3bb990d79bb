"""Progress inside an epoch: one line updated in place on a terminal, plain lines in a log.

    with EpochProgress(sys.stdout, epoch=3, epochs=50, images=50_000) as bar:
      result = train_epoch(..., progress=bar.steps_done)

The epoch's compiled program reports its steps (jaxae/loop.py, `progress`); this module only
draws. A drawing thread wakes twice a second and draws once the epoch has run for `quiet_s`
(short epochs show nothing extra): on a terminal a line rewritten in place (steps done of the
epoch's, images/s, the epoch's ETA and the run's), elsewhere (a log file, CI) a plain line at
most every `log_every_s`. Until the first step is reported the line says the program is
compiling and running (a process's first epoch) or running.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import TextIO


def _minutes(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class EpochProgress:
  """Draws one epoch's progress on `stream` while the epoch runs (a context manager)."""

  def __init__(self, stream: TextIO, *, epoch: int, epochs: int, images: int,
               later_s: float | None = None, quiet_s: float = 3.0,
               log_every_s: float = 30.0, tty: bool | None = None, compiles: bool = True,
               replicas: int = 1):
    """`images`: the epoch's (every replica's); `later_s`: the estimated seconds of the epochs
    after this one (for the run's ETA); `compiles`: whether the epoch's program may
    still need compiling (a process's first epoch); `replicas`: the run's count of seeds (the line
    names the one running, when they run one after another)."""
    self._stream, self._epoch, self._epochs = stream, epoch, epochs
    self._images, self._later_s = images, later_s
    self._quiet_s, self._log_every_s, self._compiles = quiet_s, log_every_s, compiles
    self._replicas = replicas
    self._tty = stream.isatty() if tty is None else tty
    self._lock = threading.Lock()
    self._done, self._total, self._first_tick, self._replica = 0, 0, None, None
    self._start = time.monotonic()
    self._last_log = self._start
    self._width = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="jaxae-progress")

  def steps_done(self, done: int, total: int, replica: int | None = None) -> None:
    """Called (from any thread) with the steps done of the epoch's `total`; `replica`: which of
    the run's replicas runs now, when they run one after another."""
    with self._lock:
      if self._first_tick is None:
        self._first_tick = (time.monotonic(), done)
      self._done, self._total = max(self._done, done), total
      if replica is not None:
        self._replica = replica

  def line(self, now: float | None = None) -> str:
    """The progress line as of `now`."""
    now = time.monotonic() if now is None else now
    with self._lock:
      done, total, first, replica = self._done, self._total, self._first_tick, self._replica
    which = (f", replica {replica + 1}/{self._replicas}"
             if replica is not None and self._replicas > 1 else "")
    head = f"epoch {self._epoch}/{self._epochs}{which}: "
    elapsed = now - self._start
    if first is None:
      return head + ("compiling and running" if self._compiles else "running") + \
          f" ({_minutes(elapsed)})"
    # Rates from the first report on: the time before it was compiling.
    t0, done0 = first
    rate = (done - done0) / (now - t0) if done > done0 and now > t0 else 0.0
    text = head + f"step {done:,}/{total:,}"
    if rate > 0:
      left = (total - done) / rate
      text += f"  {rate * self._images / total:,.0f} images/s  ETA {_minutes(left)}"
      if self._later_s is not None:
        text += f" (run {_minutes(left + self._later_s)})"
    return text

  def _run(self) -> None:
    try:
      self._draw_until_stopped()
    except OSError:  # The stream went away (a closed pipe, a full disk): the run's own line says.
      self._tty = False
      self._width = 0

  def _draw_until_stopped(self) -> None:
    while not self._stop.wait(0.5):
      now = time.monotonic()
      if now - self._start < self._quiet_s:
        continue
      if self._tty:
        self._draw(self.line(now))
      elif now - self._last_log >= self._log_every_s:
        self._last_log = now
        self._stream.write(self.line(now) + "\n")
        self._stream.flush()

  def _draw(self, text: str) -> None:
    # One row: a line wider than the terminal wraps, and "\r" rewrites only its last row.
    text = text[:max(shutil.get_terminal_size().columns - 1, 1)]
    pad = max(self._width - len(text), 0)
    self._stream.write("\r" + text + " " * pad)
    self._stream.flush()
    self._width = len(text)

  def __enter__(self) -> "EpochProgress":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    if self._tty and self._width:  # Leave the line empty for the epoch's own line.
      try:
        self._stream.write("\r" + " " * self._width + "\r")
        self._stream.flush()
      except OSError:
        pass  # As in _run: the next console line reports it.
