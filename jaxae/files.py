"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import tempfile
from typing import BinaryIO, Callable


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Writes `path` through `write(file)` into a temporary file beside it, renamed over `path` once
  complete: a reader, or a run after a kill, finds the old file or the new one, never a part."""
  path = pathlib.Path(path)
  if path.is_dir():  # Else the whole file is written beside it first, and the rename refused.
    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a results file should be readable.
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):  # A refused rename (path is a directory), a full disk.
      os.unlink(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
