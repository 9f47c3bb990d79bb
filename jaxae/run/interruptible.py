"""Device results fetched to the host without blocking Ctrl-C."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np


def fetch(tree: Any) -> Any:
  """`tree`'s arrays as NumPy, waited for in short sleeps: Python runs a signal handler only
  between bytecodes, so a Ctrl-C during a wait inside XLA would wait for the whole epoch."""
  for x in jax.tree.leaves(tree):
    while not x.is_ready():
      time.sleep(0.02)
  return jax.tree.map(np.asarray, tree)
