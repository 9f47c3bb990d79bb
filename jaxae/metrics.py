"""Per-image SSIM and PSNR with dm-pix, in two conventions.

standard (the headline): both images go through the one fixed per-channel affine map that sends
  the smallest and largest value preprocessing can produce to 0 and 1 (then clipped); SSIM with
  dm-pix's defaults (11x11 Gaussian, sigma 1.5, k1 0.01, k2 0.03, max_val 1);
  PSNR = 10 log10(1/MSE).
original (the published numbers' convention): the normalized images as they are; SSIM as
  scikit-image's `structural_similarity(a, b, channel_axis=-1, data_range=2)` (7x7 uniform window,
  sample covariance), PSNR with data_range = max - min of each original image.

Why the two disagree for the same images: the normalized mean images can span about 3.2 units
per channel, not the 2 the original's SSIM assumed, so its stabilizing constants (k * data_range)^2
are ~2.6x too small for the signal, and its 7x7 uniform window weighs pixels differently from the
11x11 Gaussian; its PSNR divides by each image's own range, which moves with image content. The
standard convention measures every image on one fixed [0, 1] scale with the reference window.
"""

from __future__ import annotations

import functools
from typing import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization
from jaxae.preprocess import to_unit_range

CONVENTIONS = ("standard", "original")
_ORIGINAL_WINDOW = 7
_ORIGINAL_DATA_RANGE = 2.0
# scikit-image uses sample (co)variances, i.e. dm-pix's population ones times r = n / (n - 1).
# Scaling all three second moments by r equals dividing c2 by r, i.e. k2 by sqrt(r).
_SAMPLE_COV = _ORIGINAL_WINDOW ** 2 / (_ORIGINAL_WINDOW ** 2 - 1)


def _band_matrix(taps: np.ndarray, size: int) -> np.ndarray:
  """M [size - len(taps) + 1, size] with M @ z = the 'valid' correlation of z with taps."""
  out = size - len(taps) + 1
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    m[i, i:i + len(taps)] = taps
  return m


def _separable_valid_filter(taps: np.ndarray) -> Callable[[jax.Array], jax.Array]:
  """A 2D 'valid' filter with the separable window taps x taps, as two small matmuls.

  The same numbers as dm-pix's own filter (a vmapped jnp.convolve), which is slow on CPU.
  """
  def filter_fn(z_BHWC):
    rows = jnp.asarray(_band_matrix(taps, z_BHWC.shape[-3]))
    cols = jnp.asarray(_band_matrix(taps, z_BHWC.shape[-2]))
    return jnp.einsum("oh,bhwc,pw->bopc", rows, z_BHWC, cols,
                      precision=jax.lax.Precision.HIGHEST)
  return filter_fn


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """dm-pix's default SSIM window (odd size: centred on the middle tap)."""
  x = (np.arange(size) - size // 2) / sigma
  g = np.exp(-0.5 * x ** 2)
  return (g / g.sum()).astype(np.float32)


_gaussian_filter = _separable_valid_filter(_gaussian_taps())
# The original's 7x7 uniform window, with scikit-image's border (3 px) cropped: 'valid'.
_uniform_filter = _separable_valid_filter(np.full(_ORIGINAL_WINDOW, 1 / _ORIGINAL_WINDOW))


def _as_normalized_pair(originals, reconstructions, convention: str, name: str,
                        mnist_normalization: Normalization, cifar_normalization: Normalization):
  """Both arrays as float32, after refusing what would give plausible but meaningless numbers."""
  if convention not in CONVENTIONS:
    raise ValueError(f"Unknown convention {convention!r}; use one of {CONVENTIONS}.")
  for x in (originals, reconstructions):
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"{name} takes normalized float images (as mean_images returns them), got {dtype}: "
          "uint8 0-255 images would be scored on the wrong scale. Normalize them first "
          "(jaxae.mean_images, or (x / 255 - mean) / std).")
  a, b = jnp.asarray(originals, jnp.float32), jnp.asarray(reconstructions, jnp.float32)
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"Expected two [N, H, W, C] arrays of one shape, got {a.shape} and {b.shape}.")
  if a.shape[-1] != 3:
    # Its affine map to [0, 1] is per channel of the normalized RGB images; a grey digit in
    # [0, 1] scored by it read 50 dB where its PSNR is 40 dB.
    raise ValueError(f"{name} scores normalized RGB images [N, H, W, 3] (mean images or their "
                     f"reconstructions), got {a.shape[-1]} channel(s); score [0, 1] images, such "
                     f"as a separated digit or photo, with jaxae.unit_{name}.")
  window = _WINDOWS[convention] if name == "ssim" else 1
  if min(a.shape[1:3]) < window:
    raise ValueError(f"ssim ({convention}) needs images of at least {window}x{window} pixels "
                     f"(its window), got {a.shape[1]}x{a.shape[2]}.")
  if not isinstance(a, jax.core.Tracer) and a.size:
    # Normalized images (a mean image, or either source alone) lie within the sources' normalized
    # range; values far beyond it (0-255 floats, say) are on another scale. The bound is loose on
    # purpose: it catches a wrong scale, not a slightly unusual image.
    low, high = _normalized_bounds(mnist_normalization, cifar_normalization)
    lo, hi = float(jnp.min(a)), float(jnp.max(a))
    if lo < low - (high - low) or hi > high + (high - low):
      raise ValueError(
          f"{name}'s originals lie in [{lo:.3g}, {hi:.3g}], far outside what normalized images "
          f"can take ([{low:.3g}, {high:.3g}] with these normalizations): pass normalized "
          "images, as mean_images returns them.")
  return a, b


_WINDOWS = {"standard": 11, "original": _ORIGINAL_WINDOW}


def _normalized_bounds(*normalizations: Normalization) -> tuple[float, float]:
  """The lowest and highest value (v - mean) / std takes for v in [0, 1], over all channels."""
  lows = [(0.0 - m) / s for n in normalizations for m, s in zip(n.mean, n.std)]
  highs = [(1.0 - m) / s for n in normalizations for m, s in zip(n.mean, n.std)]
  return min(lows), max(highs)


@functools.partial(jax.jit, static_argnames=("convention", "mnist_normalization",
                                              "cifar_normalization"))
def _ssim(a, b, convention, mnist_normalization, cifar_normalization):
  if convention == "standard":
    a = to_unit_range(a, mnist_normalization, cifar_normalization)
    b = to_unit_range(b, mnist_normalization, cifar_normalization)
    return pix.ssim(a, b, filter_fn=_gaussian_filter)
  return pix.ssim(a, b, max_val=_ORIGINAL_DATA_RANGE, k1=0.01, k2=0.03 / _SAMPLE_COV ** 0.5,
                  filter_fn=_uniform_filter)


@functools.partial(jax.jit, static_argnames=("convention", "mnist_normalization",
                                              "cifar_normalization"))
def _psnr(a, b, convention, mnist_normalization, cifar_normalization):
  if convention == "standard":
    a = to_unit_range(a, mnist_normalization, cifar_normalization)
    b = to_unit_range(b, mnist_normalization, cifar_normalization)
    return pix.psnr(a, b)
  data_range = jnp.max(a, axis=(1, 2, 3), keepdims=True) - jnp.min(a, axis=(1, 2, 3), keepdims=True)
  return pix.psnr(a / data_range, b / data_range)


def ssim(originals, reconstructions, convention: str = "standard", *,
         mnist_normalization: Normalization = MNIST_NORMALIZATION,
         cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> jax.Array:
  """Per-image SSIM [N] between normalized originals and reconstructions [N, H, W, C].

  Raises:
    ValueError: integer images, originals outside the normalized range, images smaller than
      the window (11x11 standard, 7x7 original), or mismatched shapes.
  """
  a, b = _as_normalized_pair(originals, reconstructions, convention, "ssim",
                             mnist_normalization, cifar_normalization)
  return _ssim(a, b, convention, mnist_normalization, cifar_normalization)


def psnr(originals, reconstructions, convention: str = "standard", *,
         mnist_normalization: Normalization = MNIST_NORMALIZATION,
         cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> jax.Array:
  """Per-image PSNR in dB [N] between normalized originals and reconstructions [N, H, W, C].

  Raises:
    ValueError: integer images, originals outside the normalized range, mismatched shapes.
  """
  a, b = _as_normalized_pair(originals, reconstructions, convention, "psnr",
                             mnist_normalization, cifar_normalization)
  return _psnr(a, b, convention, mnist_normalization, cifar_normalization)


def image_quality(originals, reconstructions, *,
                  mnist_normalization: Normalization = MNIST_NORMALIZATION,
                  cifar_normalization: Normalization = CIFAR_NORMALIZATION) -> dict[str, float]:
  """Mean and standard deviation of SSIM and PSNR in both conventions, as plain floats."""
  out = {}
  for convention in CONVENTIONS:
    for name, fn in (("ssim", ssim), ("psnr", psnr)):
      values = fn(originals, reconstructions, convention, mnist_normalization=mnist_normalization,
                  cifar_normalization=cifar_normalization)
      out[f"{name}_{convention}_mean"] = float(jnp.mean(values))
      out[f"{name}_{convention}_std"] = float(jnp.std(values))
  return out


# Images already in [0, 1] (the sources a separation recovers): the standard convention's SSIM and
# PSNR without its affine map. Estimates are clipped to [0, 1], the range every source lies in.

def _as_unit_pair(originals, estimates, name: str):
  for x in (originals, estimates):
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"{name} takes float images in [0, 1], got {dtype}: divide 0-255 images "
                       "by 255 first.")
  a, b = jnp.asarray(originals, jnp.float32), jnp.asarray(estimates, jnp.float32)
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"Expected two [N, H, W, C] arrays of one shape, got {a.shape} and {b.shape}.")
  if name == "unit_ssim" and min(a.shape[1:3]) < _WINDOWS["standard"]:
    raise ValueError(f"unit_ssim needs images of at least 11x11 pixels (its window), got "
                     f"{a.shape[1]}x{a.shape[2]}.")
  if not isinstance(a, jax.core.Tracer) and a.size:
    lo, hi = float(jnp.min(a)), float(jnp.max(a))
    if lo < -1e-6 or hi > 1 + 1e-6:
      raise ValueError(f"{name}'s originals lie in [{lo:.3g}, {hi:.3g}], not in [0, 1]: pass "
                       "source images scaled to [0, 1].")
  return a, b


@jax.jit
def _unit_ssim(a, b):
  return pix.ssim(a, jnp.clip(b, 0.0, 1.0), filter_fn=_gaussian_filter)


@jax.jit
def _unit_psnr(a, b):
  return pix.psnr(a, jnp.clip(b, 0.0, 1.0))


def unit_ssim(originals, estimates) -> jax.Array:
  """Per-image SSIM [N] of [0, 1] images (dm-pix defaults: 11x11 Gaussian, sigma 1.5, max_val 1),
  the estimates clipped to [0, 1]."""
  return _unit_ssim(*_as_unit_pair(originals, estimates, "unit_ssim"))


def unit_psnr(originals, estimates) -> jax.Array:
  """Per-image PSNR [N] in dB of [0, 1] images, 10 log10(1 / MSE), the estimates clipped."""
  return _unit_psnr(*_as_unit_pair(originals, estimates, "unit_psnr"))


def source_quality(originals, estimates, prefix: str) -> dict[str, float]:
  """{prefix_ssim_mean, prefix_ssim_std, prefix_psnr_mean, prefix_psnr_std} as plain floats.

  Computed 1,000 images at a time, so memory stays small for any split size.
  """
  parts = {"ssim": [], "psnr": []}
  for start in range(0, len(originals), 1000):
    a, b = originals[start:start + 1000], estimates[start:start + 1000]
    parts["ssim"].append(np.asarray(unit_ssim(a, b), np.float64))
    parts["psnr"].append(np.asarray(unit_psnr(a, b), np.float64))
  out = {}
  for name, values in parts.items():
    values = np.concatenate(values)
    out[f"{prefix}_{name}_mean"] = float(values.mean())
    out[f"{prefix}_{name}_std"] = float(values.std())
  return out
