"""What a run learns and how it is scored: its examples, the model's head, the loss and the metrics.

    "reconstruct": the original experiment. Examples are the normalized mean images; the model
        reproduces them; MSE loss; SSIM/PSNR of the reconstructions in two conventions.
    "separate": undo the mixture. The model sees the mean image only and estimates its MNIST digit
        (grey, 32x32, in [0, 1]) and its CIFAR-10 photo (in [0, 1]); the loss is the digit's MSE
        plus the photo's MSE; SSIM/PSNR per source, beside the trivial estimate's.

A task is a small frozen (hashable) object carried by the TrainState as a static field, like its
`apply_fn`: `train_step(state, batch)` computes the loss of the task the state was created for.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import plots
from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Config, Normalization
from jaxae.metrics import image_quality, source_quality
from jaxae.preprocess import IMAGE_SIZE, MNIST_SHAPE, grey_digits, mnist_to_grey32

IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
_EXPECTED = ("float images [B, H, W, 3] (NHWC, normalized, as mean_images returns them; sides "
             "divisible by 2 per encoder layer, e.g. 32x32)")


def _check_images(images_BHWC, name: str = "images") -> None:
  shape, dtype = tuple(images_BHWC.shape), images_BHWC.dtype
  if len(shape) != 4 or shape[-1] != IMAGE_SHAPE[-1] or not jnp.issubdtype(dtype, jnp.floating):
    what = _EXPECTED if name == "images" else f"{name} as {_EXPECTED}"
    raise ValueError(f"Expected {what}; got {dtype} {list(shape)}.")


def _check_output(outputs_BHWC, images_BHWC, channels: int) -> None:
  expected = (*images_BHWC.shape[:3], channels)
  if outputs_BHWC.shape != expected:
    raise ValueError(f"Expected {_EXPECTED}; got {images_BHWC.dtype} {list(images_BHWC.shape)}, "
                     f"for which the model returns {list(outputs_BHWC.shape)} instead of "
                     f"{list(expected)}.")


def _reconstructions(apply_fn, params, images_BHWC):
  _check_images(images_BHWC)
  reconstructions = apply_fn({"params": params}, images_BHWC)
  _check_output(reconstructions, images_BHWC, IMAGE_SHAPE[-1])
  return reconstructions


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

  # The figure a training run writes, and the one evaluate.py writes (both under the workdir).
  run_figure: ClassVar[str] = "reconstructions.png"
  eval_figure: ClassVar[str] = "comparison.png"

  def preview_rows(self, split, predictions, count: int = 8) -> list[tuple[str, np.ndarray]]:
    """(label, images [count, 32, 32, C] in [0, 1]) rows: mean images, their reconstructions."""
    norms = dict(mnist_normalization=self.mnist_normalization,
                 cifar_normalization=self.cifar_normalization)
    return [("mean image", plots.display(split.images[:count], **norms)),
            ("reconstruction", plots.display(predictions["reconstructions"][:count], **norms))]

  def draw(self, split, predictions, path, *, title: str = "", detailed: bool = False) -> None:
    """Test mean images above their reconstructions; `detailed` adds both sources above them."""
    count = min(8, len(split))
    rows = self.preview_rows(split, predictions, count)
    if detailed:
      plots.image_grid([("MNIST", np.asarray(split.mnist_images[:count]) / 255.0),
                        ("CIFAR-10", np.asarray(split.cifar_images[:count]) / 255.0), *rows],
                       path, title)
    else:
      plots.image_grid(rows, path, title or "Test mean images (top), reconstructions")

  def summary_lines(self, final: dict[str, Any]) -> list[str]:
    def f(name):
      return f"{final[f'{name}_mean']:.4f} ± {final[f'{name}_std']:.4f}"
    return [f"  standard: SSIM {f('ssim_standard')}  PSNR {f('psnr_standard')} dB",
            f"  original: SSIM {f('ssim_original')}  PSNR {f('psnr_original')} dB"]


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
    _check_images(mixture, "mixture")
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
    _check_images(mixture_BHWC, "mixture")
    outputs = apply_fn({"params": params}, mixture_BHWC)
    _check_output(outputs, mixture_BHWC, self.out_channels)
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

  run_figure: ClassVar[str] = "separation.png"
  eval_figure: ClassVar[str] = "separation.png"

  def preview_rows(self, split, predictions, count: int = 8) -> list[tuple[str, np.ndarray]]:
    """(label, images [count, 32, 32, C] in [0, 1]) rows: the mean image, the true and estimated
    digit, the true and estimated photo (estimates clipped for showing)."""
    digit, photo = self.targets(split.take(count))
    return [("mean image", plots.display(split.images[:count], self.mnist_normalization,
                                         self.cifar_normalization)),
            ("true digit", digit), ("estimated digit", np.asarray(predictions["digit"][:count])),
            ("true photo", photo), ("estimated photo", np.asarray(predictions["photo"][:count]))]

  def draw(self, split, predictions, path, *, title: str = "", detailed: bool = False) -> None:
    """Mean image | true digit | estimated digit | true photo | estimated photo, per test pair."""
    del detailed  # One figure shows everything.
    plots.image_grid(self.preview_rows(split, predictions, min(8, len(split))), path,
                     title or "Test pairs: the mean image and its two sources")

  def summary_lines(self, final: dict[str, Any]) -> list[str]:
    def row(label, m):
      return (f"  {label:<9} digit PSNR {m['digit_psnr_mean']:6.2f} ± "
              f"{m['digit_psnr_std']:.2f} dB  SSIM {m['digit_ssim_mean']:.4f}   "
              f"photo PSNR {m['photo_psnr_mean']:6.2f} ± "
              f"{m['photo_psnr_std']:.2f} dB  SSIM {m['photo_ssim_mean']:.4f}")
    return [row("estimate", final), row("trivial", final["trivial"])]


TASKS = {"reconstruct": Reconstruct, "separate": Separate}
RECONSTRUCT = Reconstruct()


def check_task_names(config: Config) -> None:
  """Raises ValueError (one line, naming the field) unless the config's task names are known."""
  for field, names in (("task", sorted(TASKS)), ("separation", SEPARATIONS),
                       ("separation_loss", SEPARATION_LOSSES)):
    value = getattr(config, field)
    if value not in names:
      raise ValueError(f"{field} must be one of {', '.join(names)}, got {value!r}.")


def task_from_config(config: Config):
  """The config's task (Config.task), with its normalizations (and separation formulation)."""
  check_task_names(config)
  norms = dict(mnist_normalization=config.mnist_normalization,
               cifar_normalization=config.cifar_normalization)
  if config.task == "separate":
    return Separate(separation=config.separation, loss_kind=config.separation_loss, **norms)
  return Reconstruct(**norms)
