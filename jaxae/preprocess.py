"""One jit-compiled step from raw uint8 digits and photos to normalized mean images."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization

IMAGE_SIZE = 32
MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)


def _check(images, name: str, shape: tuple[int, ...]) -> None:
  got_shape = tuple(getattr(images, "shape", ()))
  got_dtype = getattr(images, "dtype", None)
  if len(got_shape) != 4 or got_shape[1:] != shape or got_dtype != np.uint8:
    raise ValueError(
        f"{name} images must be uint8 [N, {', '.join(map(str, shape))}] as tfds returns them; "
        f"got {got_dtype} {list(got_shape)}.")


def _normalize(images_01_BHWC: jax.Array, norm: Normalization) -> jax.Array:
  return (images_01_BHWC - jnp.asarray(norm.mean, jnp.float32)) / jnp.asarray(norm.std, jnp.float32)


def mnist_to_grey32(mnist_u8_BHW1: jax.Array) -> jax.Array:
  """uint8 [N,28,28,1] -> float [N,32,32,1] in [0,1]: bilinear (half-pixel centres, as PIL).

  The digit of a mean image as the separation task scores it (its one grey channel).
  """
  x = jnp.asarray(mnist_u8_BHW1).astype(jnp.float32) / 255.0
  n = x.shape[0]
  return jax.image.resize(x, (n, IMAGE_SIZE, IMAGE_SIZE, 1), method="bilinear", antialias=False)


def mnist_to_rgb32(mnist_u8_BHW1: jax.Array) -> jax.Array:
  """uint8 [N,28,28,1] -> float [N,32,32,3] in [0,1], the grey digit repeated in 3 channels.

  Resizing the one grey channel and repeating it gives the same result as resizing three equal
  channels.
  """
  x = mnist_to_grey32(mnist_u8_BHW1)
  return jnp.broadcast_to(x, (x.shape[0], IMAGE_SIZE, IMAGE_SIZE, 3))


def grey_digits(mnist_images) -> jax.Array:
  """uint8 [N, 28, 28, 1] digits -> float32 [N, 32, 32, 1] in [0, 1], as one jitted call.

  Raises:
    ValueError: an input of the wrong shape or dtype.
  """
  _check(mnist_images, "MNIST", MNIST_SHAPE)
  return _grey_digits(mnist_images)


_grey_digits = jax.jit(mnist_to_grey32)


def _mean(mnist_u8, cifar_u8, mnist_normalization, cifar_normalization):
  mnist = _normalize(mnist_to_rgb32(mnist_u8), mnist_normalization)
  cifar = _normalize(cifar_u8.astype(jnp.float32) / 255.0, cifar_normalization)
  return 0.5 * (mnist + cifar)


@functools.partial(jax.jit, static_argnames=("mnist_normalization", "cifar_normalization"))
def _mean_images(pairs, mnist_normalization, cifar_normalization):
  # Several (digits, photos) pairs in one program: one compilation, and each split's images
  # written once (no concatenating and slicing of 700 MB afterwards).
  return [_mean(m, c, mnist_normalization, cifar_normalization) for m, c in pairs]


def mean_images(mnist_images, cifar_images, *,
                mnist_normalization: Normalization = MNIST_NORMALIZATION,
                cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> jax.Array:
  """Pixel-wise mean of normalized MNIST digit i and normalized CIFAR-10 photo i.

  Args:
    mnist_images: uint8 [N1, 28, 28, 1] digits.
    cifar_images: uint8 [N2, 32, 32, 3] photos.
    mnist_normalization: default the ImageNet mean/std (the original's choice).
    cifar_normalization: default mean 0.5, std 0.5.

  Returns:
    float32 [min(N1, N2), 32, 32, 3]: pairs run to the shorter set.

  Raises:
    ValueError: an input of the wrong shape or dtype.
  """
  return mean_images_of([(mnist_images, cifar_images)], mnist_normalization=mnist_normalization,
                        cifar_normalization=cifar_normalization)[0]


def mean_images_of(pairs, *, mnist_normalization: Normalization = MNIST_NORMALIZATION,
                   cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> list[jax.Array]:
  """`mean_images` of each (digits, photos) pair (e.g. of every split), as one jitted call."""
  for mnist_images, cifar_images in pairs:
    _check(mnist_images, "MNIST", MNIST_SHAPE)
    _check(cifar_images, "CIFAR-10", CIFAR_SHAPE)
  pairs = [(m[:min(len(m), len(c))], c[:min(len(m), len(c))]) for m, c in pairs]
  return _mean_images(pairs, mnist_normalization, cifar_normalization)


def value_range(mnist_normalization: Normalization = MNIST_NORMALIZATION,
                cifar_normalization: Normalization = CIFAR_NORMALIZATION):
  """Per-channel (low, high): the smallest and largest value `mean_images` can produce.

  Reached by a black (resp. white) digit over a black (resp. white) photo.
  """
  def normalized(v, norm):
    return (v - np.asarray(norm.mean, np.float64)) / np.asarray(norm.std, np.float64)
  low = 0.5 * (normalized(0.0, mnist_normalization) + normalized(0.0, cifar_normalization))
  high = 0.5 * (normalized(1.0, mnist_normalization) + normalized(1.0, cifar_normalization))
  return low.astype(np.float32), high.astype(np.float32)


def to_unit_range(images_BHWC, mnist_normalization: Normalization = MNIST_NORMALIZATION,
                  cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> jax.Array:
  """Maps normalized mean images to [0, 1] by one fixed per-channel affine map, then clips."""
  low, high = value_range(mnist_normalization, cifar_normalization)
  return jnp.clip((jnp.asarray(images_BHWC) - low) / (high - low), 0.0, 1.0)
