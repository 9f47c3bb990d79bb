"""PNG figures: the loss curve and each task's test pairs (matplotlib, no display)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from jaxae import extras
from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization
from jaxae.files import write_atomically
from jaxae.preprocess import to_unit_range

# Marks every figure as jaxae's, so that --overwrite tells it from a file of the same name
# (jaxae/run/workdir.py, is_jaxae_file).
PNG_METADATA = {"Software": "jaxae"}


def _pyplot():
  matplotlib = extras.load("matplotlib", "run")
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
  _save(fig, path)
  plt.close(fig)


def image_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike,
               title: str = "") -> None:
  """One labelled row per (label, images [K, H, W, C] in [0, 1]); columns are examples.

  The images are drawn as one picture (`mosaic`), which draws faster than one axes per image.
  """
  plt = _pyplot()
  k = len(rows[0][1])
  picture, centers = mosaic([images for _, images in rows])
  fig, ax = plt.subplots(figsize=(1.1 * k + 1.2, 1.15 * len(rows) + 0.4), dpi=100)
  ax.imshow(picture, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks(centers, [label for label, _ in rows], fontsize=8)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def mosaic(rows: Sequence[np.ndarray], gap: int = 4) -> tuple[np.ndarray, list[float]]:
  """Rows of images [K, H, W, C] in [0, 1] (C 1 or 3; H, W may differ between rows) laid out
  on white, each centred in a cell of the largest size, cells `gap` pixels apart.

  Returns the RGB picture [rows * (h + gap) - gap, K * (w + gap) - gap, 3] and each row's
  vertical centre (where its label goes).
  """
  k = len(rows[0])
  if any(len(images) != k for images in rows):
    raise ValueError(f"every row needs {k} images, got {[len(images) for images in rows]}.")
  cell_h = max(images.shape[1] for images in rows)
  cell_w = max(images.shape[2] for images in rows)
  picture = np.ones((len(rows) * (cell_h + gap) - gap, k * (cell_w + gap) - gap, 3), np.float32)
  for r, images in enumerate(rows):
    images = np.clip(np.asarray(images, np.float32), 0, 1)
    _, h, w, _ = images.shape
    top = r * (cell_h + gap) + (cell_h - h) // 2
    for c, image in enumerate(images):
      left = c * (cell_w + gap) + (cell_w - w) // 2
      picture[top:top + h, left:left + w] = image  # A grey image fills all three channels.
  return picture, [r * (cell_h + gap) + (cell_h - 1) / 2 for r in range(len(rows))]


def display(images_BHWC, mnist_normalization: Normalization = MNIST_NORMALIZATION,
            cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> np.ndarray:
  """Normalized mean images (or reconstructions) -> [0, 1] for showing."""
  return np.asarray(to_unit_range(images_BHWC, mnist_normalization, cifar_normalization))


# A task's figures (jaxae/tasks/): the file a training run writes and the one evaluate.py writes
# (both under the workdir), and the rows of test pairs each shows.
RUN_FIGURES = {"reconstruct": "reconstructions.png", "separate": "separation.png"}
EVAL_FIGURES = {"reconstruct": "comparison.png", "separate": "separation.png"}


def preview_rows(task, split, predictions, count: int = 8) -> list[tuple[str, np.ndarray]]:
  """(label, images [count, 32, 32, C] in [0, 1]) rows showing the task's predictions.

  reconstruct: the mean images, their reconstructions. separate: the mean image, the true and
  estimated digit, the true and estimated photo (estimates clipped for showing).
  """
  norms = dict(mnist_normalization=task.mnist_normalization,
               cifar_normalization=task.cifar_normalization)
  mean_images = ("mean image", display(split.images[:count], **norms))
  if task.name == "separate":
    digit, photo = task.targets(split.take(count))
    return [mean_images, ("true digit", digit),
            ("estimated digit", np.asarray(predictions["digit"][:count])),
            ("true photo", photo), ("estimated photo", np.asarray(predictions["photo"][:count]))]
  return [mean_images,
          ("reconstruction", display(predictions["reconstructions"][:count], **norms))]


def draw(task, split, predictions, path: str | os.PathLike, *, title: str = "",
         detailed: bool = False) -> None:
  """The task's test pairs: `preview_rows` of the first 8. `detailed` (evaluate.py's figure) adds
  both sources above a reconstruction; a separation shows them anyway."""
  count = min(8, len(split))
  rows = preview_rows(task, split, predictions, count)
  if task.name == "separate":
    image_grid(rows, path, title or "Test pairs: the mean image and its two sources")
  elif detailed:
    image_grid([("MNIST", np.asarray(split.mnist_images[:count]) / 255.0),
                ("CIFAR-10", np.asarray(split.cifar_images[:count]) / 255.0), *rows], path, title)
  else:
    image_grid(rows, path, title or "Test mean images (top), reconstructions")


def quality_curves(curves: dict[str, Sequence[Sequence[tuple[float, float]]]],
                   path: str | os.PathLike, target: float | None = None, title: str = "") -> None:
  """PSNR against training seconds: per label, one line per seed of (seconds, PSNR) points."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
  for k, (label, seeds) in enumerate(curves.items()):
    for s, points in enumerate(seeds):
      seconds, psnrs = zip(*points)
      ax.plot(seconds, psnrs, marker=".", color=f"C{k}", alpha=0.8,
              label=label if s == 0 else None)
  if target is not None:
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"{target:g} dB")
  ax.set_xscale("log")
  ax.set_xlabel("training seconds (sum of epoch programs)")
  ax.set_ylabel("standard PSNR, test mean (dB)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def _save(fig, path: str | os.PathLike) -> None:
  """The figure as a PNG at `path`, whole or not at all: a kill mid-write leaves no partial file
  that a later run would take for someone else's."""
  write_atomically(path, lambda f: fig.savefig(f, format="png", metadata=PNG_METADATA))
