"""The progress line of an epoch (jaxae/report/progress.py)."""

import io
import os
import shutil
import time

from jaxae.report.progress import EpochProgress


def test_the_line_says_compiling_until_steps_arrive_then_rate_and_both_etas():
  bar = EpochProgress(io.StringIO(), epoch=2, epochs=5, images=3200, later_s=300.0)
  start = bar._start  # pylint: disable=protected-access
  assert bar.line(start + 4) == "epoch 2/5: compiling and running (4 s)"
  bar.steps_done(10, 100)
  bar._first_tick = (start + 5, 10)  # pylint: disable=protected-access
  bar.steps_done(60, 100)
  # 50 steps in 10 s of 32 images: 160 images/s, 40 steps (8 s) left, 308 s for the run.
  assert bar.line(start + 15) == ("epoch 2/5: step 60/100  160 images/s  ETA 8 s "
                                  "(run 5.1 min)")
  later = EpochProgress(io.StringIO(), epoch=3, epochs=5, images=3200, compiles=False,
                        replicas=4)
  assert later.line(later._start + 4) == "epoch 3/5: running (4 s)"  # pylint: disable=protected-access
  later.steps_done(150, 400, replica=1)  # Replicas one after another: the second one runs.
  assert later.line().startswith("epoch 3/5, replica 2/4: step 150/400")


class _Stream(io.StringIO):
  def __init__(self, tty):
    super().__init__()
    self._tty = tty

  def isatty(self):
    return self._tty


def test_a_terminal_gets_one_line_in_place_and_a_log_plain_lines():
  tty, log = _Stream(True), _Stream(False)
  for stream, drawn in ((tty, lambda: tty.getvalue().count("\r") >= 2),
                        (log, lambda: log.getvalue().count("\n") >= 2)):
    with EpochProgress(stream, epoch=1, epochs=1, images=100, quiet_s=0.0,
                       log_every_s=0.0) as bar:
      bar.steps_done(1, 10)
      deadline = time.monotonic() + 30  # Two drawings (every 0.5 s), however busy the machine.
      while not drawn() and time.monotonic() < deadline:
        time.sleep(0.05)
  drawn = tty.getvalue()
  assert drawn.count("\r") >= 3 and "\n" not in drawn
  assert drawn.endswith("\r") and drawn.rsplit("\r", 2)[-2].strip() == ""  # Left empty.
  lines = log.getvalue().splitlines()
  assert len(lines) >= 2 and "\r" not in log.getvalue()
  assert all(line.startswith("epoch 1/1: step 1/10") for line in lines)


def test_a_short_epoch_draws_nothing_and_a_log_waits_its_interval():
  for tty, log_every in ((True, 0.0), (False, 60.0)):
    stream = _Stream(tty)
    with EpochProgress(stream, epoch=1, epochs=1, images=100, quiet_s=60.0 if tty else 0.0,
                       log_every_s=log_every) as bar:
      bar.steps_done(5, 10)
      time.sleep(0.7)
    assert stream.getvalue() == ""


def test_a_narrow_terminal_gets_one_row_rewritten_in_place(monkeypatch):
  """Before: at 20 columns the line wrapped, and each redraw left its first rows on screen."""
  monkeypatch.setattr(shutil, "get_terminal_size", lambda *_: os.terminal_size((20, 24)))
  stream = _Stream(True)
  bar = EpochProgress(stream, epoch=12, epochs=50, images=50_000, later_s=3000.0)
  bar.steps_done(700, 1563)
  bar._draw(bar.line())  # pylint: disable=protected-access
  drawn = stream.getvalue().split("\r")[-1]
  assert 0 < len(drawn) <= 19 and drawn == bar.line()[:19]
