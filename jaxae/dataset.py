"""The mixed dataset: mean image i = mean of MNIST digit i and CIFAR-10 photo i (tfds order)."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import numpy as np

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization
from jaxae.preprocess import mean_images_of
from jaxae.sources import SPLITS, load_splits


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


def check_limit(split: str, limit: int, size: int | None = None) -> None:
  """Raises ValueError (one line, naming `<split>_limit`) unless `limit` is 0 (the whole split)
  or a count of pairs of at most `size` (when known)."""
  if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
    raise ValueError(f"{split}_limit={limit!r} must be 0 (all) or a positive count of pairs.")
  if size is not None and limit > size:
    raise ValueError(f"{split}_limit={limit} is larger than the {split} split ({size:,} pairs).")


def mix(mnist: tuple[np.ndarray, np.ndarray], cifar: tuple[np.ndarray, np.ndarray], *,
        mnist_normalization: Normalization = MNIST_NORMALIZATION,
        cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> MixedSplit:
  """Pairs (images, labels) of MNIST with those of CIFAR-10, truncated to the shorter."""
  return _mix_all([(mnist, cifar)], mnist_normalization, cifar_normalization)[0]


def _mix_all(pairs, mnist_normalization: Normalization,
             cifar_normalization: Normalization) -> list[MixedSplit]:
  """`mix` of several (mnist, cifar) pairs of (images, labels), preprocessed in one call."""
  images = mean_images_of([(m[0], c[0]) for m, c in pairs],
                          mnist_normalization=mnist_normalization,
                          cifar_normalization=cifar_normalization)
  # mean_images_of runs each pair to its shorter set; its output's length is the pairs'.
  return [MixedSplit(x, m[0][:len(x)], c[0][:len(x)], m[1][:len(x)], c[1][:len(x)])
          for x, (m, c) in zip(images, pairs)]


def load_mixed(data_dir: str | os.PathLike | None = None, *,
               splits: Sequence[str] = SPLITS, train_limit: int = 0, test_limit: int = 0,
               mnist_normalization: Normalization = MNIST_NORMALIZATION,
               cifar_normalization: Normalization = CIFAR_NORMALIZATION,
               cache: bool = True) -> dict[str, MixedSplit]:
  """Loads the datasets' `splits` (default both) as {"train": MixedSplit, "test": MixedSplit}.

  `train_limit` and `test_limit` keep the first N pairs of their split (0: all of them). Only the
  pairs kept are preprocessed, so a small run does not pay for 60,000 mean images. All splits go
  through one preprocessing call, so it compiles once.

  Raises:
    ValueError: an unknown split, or a limit that is negative or larger than its split.
  """
  limits = {"train": train_limit, "test": test_limit}
  if isinstance(splits, str):  # Else read letter by letter: "got ('t', 'r', 'a', 'i', 'n')".
    raise ValueError(f"splits is a sequence of split names, e.g. ({splits!r},); got the string "
                     f"{splits!r}.")
  if not splits or len(set(splits)) < len(splits) or any(s not in SPLITS for s in splits):
    raise ValueError(f"splits must name some of {SPLITS}, got {tuple(splits)}.")
  for split, limit in limits.items():
    check_limit(split, limit)  # Before minutes of loading; against the size once it is known.
  sources = load_splits([(name, split) for split in splits for name in ("mnist", "cifar10")],
                        data_dir, cache=cache, write_behind=True)
  pairs = []
  for split, (mnist, cifar) in zip(splits, zip(sources[::2], sources[1::2])):
    size = min(len(mnist[0]), len(cifar[0]))
    check_limit(split, limits[split], size)
    keep = limits[split] or size
    pairs.append(((mnist[0][:keep], mnist[1][:keep]), (cifar[0][:keep], cifar[1][:keep])))
  return dict(zip(splits, _mix_all(pairs, mnist_normalization, cifar_normalization)))
