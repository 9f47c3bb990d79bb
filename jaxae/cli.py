"""Shared pieces of the experiment scripts: one-line errors, data checks, timed loading."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import NoReturn

from jaxae.config import Config
from jaxae.data import _prepared_files, _resolve_data_dir, prepare_command
from jaxae.dataset import MixedSplit, load_mixed


def quiet_logs() -> None:
  """Keeps the scripts' output to their own lines: orbax and tfds log every step at INFO."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)


def fail(message: str, exit_code: int = 2) -> NoReturn:
  """Prints one clear line (no traceback) and exits."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def check_data_dir(data_dir: str | None) -> None:
  """Fails fast, before any work, if a dataset split is not prepared in data_dir."""
  resolved = _resolve_data_dir(data_dir)
  for name in ("mnist", "cifar10"):
    for split in ("train", "test"):
      if not _prepared_files(name, split, resolved):
        fail(f"--data_dir={resolved} does not hold the prepared {name} {split} split "
             f"(tfds ArrayRecord). Point --data_dir at the directory that does (on these "
             f"machines ../shared/tensorflow_datasets), or prepare it once with: "
             f"{prepare_command(name, resolved)}")


def check_writable(workdir: str) -> None:
  """Fails if workdir (or the nearest existing folder above it) cannot be written."""
  path = pathlib.Path(workdir).absolute()
  probe = path
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
    fail(f"--workdir={workdir} cannot be written ({probe} is not a writable directory).")


def load_data(data_dir: str | None, config: Config, train_limit: int, test_limit: int,
              log=print) -> tuple[MixedSplit, MixedSplit]:
  """Loads, preprocesses and limits both splits; checks the limits against the real sizes."""
  start = time.perf_counter()
  splits = load_mixed(data_dir, mnist_normalization=config.mnist_normalization,
                      cifar_normalization=config.cifar_normalization)
  splits["train"].images.block_until_ready()
  log(f"Loaded and preprocessed {len(splits['train']):,} train and {len(splits['test']):,} test "
      f"mean images in {time.perf_counter() - start:.1f} s.")
  for name, limit in (("train", train_limit), ("test", test_limit)):
    if limit > len(splits[name]):
      fail(f"--{name}_limit={limit} is larger than the {name} split ({len(splits[name]):,} pairs).")
  return splits["train"].take(train_limit), splits["test"].take(test_limit)
