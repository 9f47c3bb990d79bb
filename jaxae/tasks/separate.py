"""Undo the mixture: estimate the MNIST digit and the CIFAR-10 photo of each mean image.

The model sees the mean image only and estimates its digit (grey, 32x32, in [0, 1]) and its photo
(in [0, 1]); the loss is the digit's MSE plus the photo's MSE (or its log); SSIM/PSNR per source,
beside the trivial estimate's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Normalization
from jaxae.metrics import source_quality
from jaxae.preprocess import IMAGE_SIZE, MNIST_SHAPE, grey_digits, mnist_to_grey32
from jaxae.tasks.base import check_images, checked_outputs

# How a separating model's output becomes a consistent estimate (Config.separation):
#   "digit":   the model outputs the grey digit g (1 channel); the photo is what the mean image
#              leaves: normalized photo = 2 * mean - normalized digit.
#   "project": the model outputs a digit and a photo (1 + 3 channels); both are moved to the
#              nearest (least squares, in [0, 1] units) pair whose mean is the mean image.
#   "digit28": as "digit", but the grey digit is made what preprocessing makes every true digit:
#              the bilinear resize R X R^T of a 28x28 digit X in [0, 1]. X is the least-squares
#              fit to the model's 32x32 output, clipped to [0, 1] (gradients pass the clip,
#              so a clipped pixel still learns). 32x32 images only.
# Every estimate is consistent by construction: 0.5 * (normalized digit + normalized photo) is
# the mean image, up to float rounding.
SEPARATIONS = ("digit", "project", "digit28")

# "digit28"'s clip passes gradients straight through (unchanged). The values outside [0, 1] then
# drift (separate_unet_digit28's trained X reach -5.5), harmlessly: a rule that passed the
# gradient only inward was 0.06 dB lower (RESULTS.md, config.REMOVED_OPTIONS).

# The per-example loss of "separate": "mse" (digit MSE + photo MSE) or "log_mse" (its log10).
# The goal is the mean of per-image PSNRs, i.e. of -10 log10(MSE): "mse" weighs each image by
# its error, so the hardest images dominate the gradient; "log_mse" weighs every image's relative
# improvement equally, which is what the mean PSNR rewards (RESULTS.md, "Separation": 1.6 dB
# more on both sources after 3 epochs on 10,000 pairs). The floor keeps a perfect image from
# dominating instead.
SEPARATION_LOSSES = ("log_mse", "mse")
LOG_MSE_FLOOR = 1e-5


@functools.cache
def _resize_matrices() -> tuple[np.ndarray, np.ndarray]:
  """(R [32, 28], its pseudo-inverse [28, 32]): preprocessing's 28 -> 32 resize of one axis.

  The grey digit of a pair is R X R^T for its 28x28 digit X in [0, 1]. R is read off
  mnist_to_grey32 itself, so that it is always preprocessing's: a digit whose row j is white
  resizes to column j of R (in every column, as the bilinear weights sum to 1).
  """
  size = MNIST_SHAPE[0]
  white_rows = np.zeros((size, size, size, 1), np.uint8)
  white_rows[np.arange(size), np.arange(size)] = 255
  with jax.ensure_compile_time_eval():
    r = np.asarray(mnist_to_grey32(white_rows), np.float64)[:, :, 0, 0].T
  return r.astype(np.float32), np.linalg.pinv(r).astype(np.float32)


def resized_digit(outputs_BHW1) -> jax.Array:
  """The 32x32 grey digits R X R^T nearest the outputs, X (28x28) least squares clipped to [0, 1]
  (the clip's gradient passes straight through).

  Raises:
    ValueError: outputs that are not [B, 32, 32, 1].
  """
  if tuple(outputs_BHW1.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 1):
    raise ValueError(f"separation 'digit28' takes 32x32 images (a 28x28 MNIST digit resized); "
                     f"the model returned {list(outputs_BHW1.shape)}.")
  r, r_pinv = (jnp.asarray(m) for m in _resize_matrices())
  x = jnp.einsum("ij,bjkc,lk->bilc", r_pinv, outputs_BHW1, r_pinv)
  x = x + jax.lax.stop_gradient(jnp.clip(x, 0.0, 1.0) - x)
  return jnp.einsum("ij,bjkc,lk->bilc", r, x, r)


@dataclasses.dataclass(frozen=True)
class Separate:
  """Recover the digit and the photo of each mean image."""

  name: ClassVar[str] = "separate"
  separation: str = "digit"
  loss_kind: str = "log_mse"
  mnist_normalization: Normalization = MNIST_NORMALIZATION
  cifar_normalization: Normalization = CIFAR_NORMALIZATION

  @property
  def loss_label(self) -> str:
    mse = "digit MSE + photo MSE ([0, 1] units)"
    return f"log10({mse})" if self.loss_kind == "log_mse" else mse

  @property
  def out_channels(self) -> int:
    return 4 if self.separation == "project" else 1

  def examples(self, split) -> dict[str, jax.Array]:
    """{"mixture": mean images [N, 32, 32, 3], "digit": grey digits [N, 32, 32, 1] in [0, 1]}.

    The photo target is not stored: 2 * mean - normalized digit is the normalized photo.
    """
    return {"mixture": split.images, "digit": grey_digits(split.mnist_images)}

  def _photo_map(self, mixture_BHWC):
    """(a, b) [B, H, W, 3] with photo = a - b * digit for every digit consistent with the mixture.

    normalized photo = 2 m - (g - mu_m) / s_m, and photo = s_p * normalized photo + mu_p.
    """
    mu_m = jnp.asarray(self.mnist_normalization.mean, jnp.float32)
    s_m = jnp.asarray(self.mnist_normalization.std, jnp.float32)
    mu_p = jnp.asarray(self.cifar_normalization.mean, jnp.float32)
    s_p = jnp.asarray(self.cifar_normalization.std, jnp.float32)
    a = s_p * (2.0 * mixture_BHWC + mu_m / s_m) + mu_p
    return a, jnp.broadcast_to(s_p / s_m, a.shape)

  def estimate(self, outputs_BHWC, mixture_BHWC) -> tuple[jax.Array, jax.Array]:
    """The model's outputs -> consistent (digit [B, H, W, 1], photo [B, H, W, 3]), [0, 1] units."""
    a, b = self._photo_map(mixture_BHWC)
    if self.separation == "digit":
      digit = outputs_BHWC
    elif self.separation == "digit28":
      digit = resized_digit(outputs_BHWC)
    else:
      # argmin_g (g - g')^2 + sum_c (a_c - b_c g - p'_c)^2, per pixel.
      g, p = outputs_BHWC[..., :1], outputs_BHWC[..., 1:]
      digit = (g + jnp.sum(b * (a - p), axis=-1, keepdims=True)) / (
          1.0 + jnp.sum(b * b, axis=-1, keepdims=True))
    return digit, a - b * digit

  def photo_from_digit(self, digit_BHW1, mixture_BHWC) -> jax.Array:
    a, b = self._photo_map(mixture_BHWC)
    return a - b * digit_BHW1

  def loss(self, apply_fn, params, batch) -> tuple[dict[str, jax.Array], jax.Array]:
    """({"digit": [B, 32, 32, 1], "photo": [B, 32, 32, 3]}, per-example loss [B]).

    The loss of an example is e = digit MSE + photo MSE (in [0, 1] units), or log10(e + 1e-5)
    with loss_kind "log_mse" (the default; see SEPARATION_LOSSES).
    """
    if not isinstance(batch, dict) or set(batch) != {"mixture", "digit"}:
      raise ValueError("the separate task takes batches {'mixture': mean images [B, 32, 32, 3], "
                       "'digit': grey digits [B, 32, 32, 1] in [0, 1]} (Separate.examples); got "
                       f"{type(batch).__name__}"
                       + (f" with keys {sorted(batch)}." if isinstance(batch, dict) else "."))
    mixture, digit = batch["mixture"], batch["digit"]
    check_images(mixture, "mixture")
    if digit.shape != (*mixture.shape[:3], 1):
      raise ValueError(f"Expected digit targets [B, H, W, 1] beside mixtures "
                       f"{list(mixture.shape)}; got {list(digit.shape)}.")
    predictions = self.predict(apply_fn, params, mixture)
    photo = self.photo_from_digit(digit, mixture)
    per_example = (jnp.mean(jnp.square(predictions["digit"] - digit), axis=(1, 2, 3))
                   + jnp.mean(jnp.square(predictions["photo"] - photo), axis=(1, 2, 3)))
    if self.loss_kind == "log_mse":
      per_example = jnp.log10(per_example + LOG_MSE_FLOOR)
    return predictions, per_example

  def predict(self, apply_fn, params, mixture_BHWC) -> dict[str, jax.Array]:
    """{"digit": [B, 32, 32, 1], "photo": [B, 32, 32, 3]} in [0, 1] of normalized mean images."""
    check_images(mixture_BHWC, "mixture")
    outputs = checked_outputs(apply_fn, params, mixture_BHWC, self.out_channels)
    digit, photo = self.estimate(outputs, mixture_BHWC)
    return {"digit": digit, "photo": photo}

  def targets(self, split) -> tuple[np.ndarray, np.ndarray]:
    """The true (digit [N, 32, 32, 1], photo [N, 32, 32, 3]) in [0, 1], from the uint8 sources."""
    return (np.asarray(grey_digits(split.mnist_images)),
            np.asarray(split.cifar_images, np.float32) / 255.0)

  def trivial_estimate(self, split) -> tuple[np.ndarray, np.ndarray]:
    """The blank-digit guess: digit 0, photo = what the mean image leaves (consistent too)."""
    blank = jnp.zeros((*split.images.shape[:3], 1), jnp.float32)
    return np.asarray(blank), np.asarray(self.photo_from_digit(blank, split.images))

  def final_metrics(self, split, predictions: dict[str, np.ndarray]) -> dict[str, Any]:
    digit, photo = self.targets(split)
    out = {**source_quality(digit, predictions["digit"], "digit"),
           **source_quality(photo, predictions["photo"], "photo")}
    blank_digit, leftover_photo = self.trivial_estimate(split)
    out["trivial"] = {**source_quality(digit, blank_digit, "digit"),
                      **source_quality(photo, leftover_photo, "photo")}
    return out
