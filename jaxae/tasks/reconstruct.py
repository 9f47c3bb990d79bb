"""The original experiment: reproduce the mean image (MSE loss; SSIM/PSNR in two conventions)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization
from jaxae.metrics import image_quality
from jaxae.tasks.base import IMAGE_SHAPE, check_images, checked_outputs


def _reconstructions(apply_fn, params, images_BHWC):
  check_images(images_BHWC)
  return checked_outputs(apply_fn, params, images_BHWC, IMAGE_SHAPE[-1])


def per_example_mse(apply_fn, params, images_BHWC):
  """Returns (reconstructions [B,H,W,C], mean squared error per example [B]).

  Raises:
    ValueError: images that are not float [B, H, W, 3] (NHWC), or whose reconstruction comes back
      in another shape (sides the encoder cannot halve evenly, e.g. 28x28).
  """
  reconstructions = _reconstructions(apply_fn, params, images_BHWC)
  return reconstructions, jnp.mean(jnp.square(reconstructions - images_BHWC), axis=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class Reconstruct:
  """The original experiment: reproduce the mean image."""

  name: ClassVar[str] = "reconstruct"
  out_channels: ClassVar[int] = 3
  loss_label: ClassVar[str] = "MSE (normalized images)"
  mnist_normalization: Normalization = MNIST_NORMALIZATION
  cifar_normalization: Normalization = CIFAR_NORMALIZATION

  def examples(self, split) -> jax.Array:
    """The per-example arrays the loop batches: here the mean images [N, 32, 32, 3] alone."""
    return split.images

  def loss(self, apply_fn, params, batch) -> tuple[dict[str, jax.Array], jax.Array]:
    """({"reconstructions": [B, 32, 32, 3]}, per-example MSE [B])."""
    if not hasattr(batch, "shape"):
      raise ValueError("the reconstruct task takes batches of mean images [B, 32, 32, 3] (an "
                       f"array), got a {type(batch).__name__}"
                       + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else "")
                       + "; a separation state (Config(task='separate')) takes the dict.")
    reconstructions, per_example = per_example_mse(apply_fn, params, batch)
    return {"reconstructions": reconstructions}, per_example

  def predict(self, apply_fn, params, images_BHWC) -> dict[str, jax.Array]:
    """{"reconstructions": [B, 32, 32, 3]} of normalized mean images, no targets needed."""
    return {"reconstructions": _reconstructions(apply_fn, params, images_BHWC)}

  def final_metrics(self, split, predictions: dict[str, np.ndarray]) -> dict[str, float]:
    return image_quality(split.images, predictions["reconstructions"],
                         mnist_normalization=self.mnist_normalization,
                         cifar_normalization=self.cifar_normalization)
