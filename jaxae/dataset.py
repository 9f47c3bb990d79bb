"""The mixed dataset: mean image i = mean of MNIST digit i and CIFAR-10 photo i (tfds order)."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization
from jaxae.data import load_splits
from jaxae.preprocess import mean_images


@dataclasses.dataclass(frozen=True)
class MixedSplit:
  """One split of mean images, with both source images of every pair kept.

  Attributes:
    images: float32 [N, 32, 32, 3] normalized mean images (on the default device).
    mnist_images: uint8 [N, 28, 28, 1], the digit of each pair.
    cifar_images: uint8 [N, 32, 32, 3], the photo of each pair.
    mnist_labels: int64 [N].
    cifar_labels: int64 [N].
  """

  images: jax.Array
  mnist_images: np.ndarray
  cifar_images: np.ndarray
  mnist_labels: np.ndarray
  cifar_labels: np.ndarray

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def take(self, n: int) -> "MixedSplit":
    """The first n pairs (all of them if n is 0)."""
    if not n:
      return self
    return MixedSplit(self.images[:n], self.mnist_images[:n], self.cifar_images[:n],
                      self.mnist_labels[:n], self.cifar_labels[:n])


def mix(mnist: tuple[np.ndarray, np.ndarray], cifar: tuple[np.ndarray, np.ndarray], *,
        mnist_normalization: Normalization = MNIST_NORMALIZATION,
        cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> MixedSplit:
  """Pairs (images, labels) of MNIST with those of CIFAR-10, truncated to the shorter."""
  n = min(len(mnist[0]), len(cifar[0]))
  images = mean_images(mnist[0][:n], cifar[0][:n], mnist_normalization=mnist_normalization,
                       cifar_normalization=cifar_normalization)
  return MixedSplit(images, mnist[0][:n], cifar[0][:n], mnist[1][:n], cifar[1][:n])


def load_mixed(data_dir: str | os.PathLike | None = None, *,
               mnist_normalization: Normalization = MNIST_NORMALIZATION,
               cifar_normalization: Normalization = CIFAR_NORMALIZATION,
               cache: bool = True) -> dict[str, MixedSplit]:
  """Loads both datasets' train and test splits and returns {"train": ..., "test": ...}.

  Both splits go through one `mean_images` call, so preprocessing compiles once.
  """
  (m_tr, m_te, c_tr, c_te) = load_splits(
      [("mnist", "train"), ("mnist", "test"), ("cifar10", "train"), ("cifar10", "test")],
      data_dir, cache=cache)
  n_tr = min(len(m_tr[0]), len(c_tr[0]))
  n_te = min(len(m_te[0]), len(c_te[0]))
  both = mix((np.concatenate([m_tr[0][:n_tr], m_te[0][:n_te]]),
              np.concatenate([m_tr[1][:n_tr], m_te[1][:n_te]])),
             (np.concatenate([c_tr[0][:n_tr], c_te[0][:n_te]]),
              np.concatenate([c_tr[1][:n_tr], c_te[1][:n_te]])),
             mnist_normalization=mnist_normalization, cifar_normalization=cifar_normalization)

  def part(sl: slice) -> MixedSplit:
    return MixedSplit(both.images[sl], both.mnist_images[sl], both.cifar_images[sl],
                      both.mnist_labels[sl], both.cifar_labels[sl])

  return {"train": part(slice(0, n_tr)), "test": part(slice(n_tr, n_tr + n_te))}
