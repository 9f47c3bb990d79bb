"""PNG figures: the loss curve and original/reconstruction grids (matplotlib, no display)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization
from jaxae.preprocess import to_unit_range

# Marks every figure as jaxae's, so that --overwrite tells it from a file of the same name
# (jaxae/workdir.py, is_jaxae_file).
PNG_METADATA = {"Software": "jaxae"}


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def loss_curve(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "",
               ylabel: str = "MSE (normalized images)") -> None:
  """Train and test loss per epoch; log scale unless a loss is <= 0 (log10 losses).

  A history of several seeds (each loss a list, one per replica) is drawn as the mean over the
  replicas with a band from their min to their max.
  """
  plt = _pyplot()
  epochs = [h["epoch"] for h in history]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  for key, label in (("train_loss", "train"), ("test_loss", "test")):
    values = np.asarray([np.atleast_1d(h[key]) for h in history], np.float64)  # [epochs, R]
    line, = ax.plot(epochs, values.mean(axis=1), marker=".", label=label)
    if values.shape[1] > 1:
      ax.fill_between(epochs, values.min(axis=1), values.max(axis=1), color=line.get_color(),
                      alpha=0.25, linewidth=0)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  if all(np.all(np.asarray(h["train_loss"]) > 0) and np.all(np.asarray(h["test_loss"]) > 0)
         for h in history):
    ax.set_yscale("log")
  ax.set_title(title or "Loss per epoch")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, metadata=PNG_METADATA)
  plt.close(fig)


def image_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike,
               title: str = "") -> None:
  """One labelled row per (label, images [K, H, W, C] in [0, 1]); columns are examples."""
  plt = _pyplot()
  k = len(rows[0][1])
  fig, axes = plt.subplots(len(rows), k, figsize=(1.1 * k + 1.2, 1.15 * len(rows) + 0.4), dpi=100,
                           squeeze=False)
  for r, (label, images) in enumerate(rows):
    for c in range(k):
      ax = axes[r, c]
      image = np.clip(np.asarray(images[c], np.float32), 0, 1)
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(label, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, metadata=PNG_METADATA)
  plt.close(fig)


def display(images_BHWC, mnist_normalization: Normalization = MNIST_NORMALIZATION,
            cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> np.ndarray:
  """Normalized mean images (or reconstructions) -> [0, 1] for showing."""
  return np.asarray(to_unit_range(images_BHWC, mnist_normalization, cifar_normalization))
