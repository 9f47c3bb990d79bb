"""What every task is: the declared interface, and the checks its inputs share.

A task is a small frozen (hashable) object carried by the TrainState as a static field, like its
`apply_fn`: `train_step(state, batch)` computes the loss of the task the state was created for.
Figures and console lines of a task live in jaxae/report/, which reads its predictions.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.preprocess import IMAGE_SIZE

IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
_EXPECTED = ("float images [B, H, W, 3] (NHWC, normalized, as mean_images returns them; sides "
             "divisible by 2 per encoder layer, e.g. 32x32)")


@runtime_checkable
class Task(Protocol):
  """What a run learns and how it is scored. Implementations: Reconstruct, Separate."""

  name: str           # Config.task's value for it.
  out_channels: int   # The model's output channels.
  loss_label: str     # What `loss` measures, for a loss curve's axis.

  def examples(self, split) -> Any:
    """The per-example arrays the epoch loop batches (an array [N, ...] or a dict of them)."""

  def loss(self, apply_fn, params, batch) -> tuple[dict[str, jax.Array], jax.Array]:
    """(predictions, per-example loss [B]) of a batch of `examples`; refuses another layout."""

  def predict(self, apply_fn, params, images_BHWC) -> dict[str, jax.Array]:
    """Predictions of normalized mean images, no targets needed."""

  def final_metrics(self, split, predictions: dict[str, np.ndarray]) -> dict[str, Any]:
    """The run's final numbers (SSIM, PSNR, ...) of `predictions` for a whole split."""


def check_images(images_BHWC, name: str = "images") -> None:
  shape, dtype = tuple(images_BHWC.shape), images_BHWC.dtype
  if len(shape) != 4 or shape[-1] != IMAGE_SHAPE[-1] or not jnp.issubdtype(dtype, jnp.floating):
    what = _EXPECTED if name == "images" else f"{name} as {_EXPECTED}"
    raise ValueError(f"Expected {what}; got {dtype} {list(shape)}.")
  if shape[0] == 0:  # Its mean loss would be 0 / 0.
    raise ValueError(f"Expected at least one image in {name}; got an empty batch {list(shape)}.")


def checked_outputs(apply_fn, params, images_BHWC, channels: int) -> jax.Array:
  """The model's outputs for the images, refused (`check_output`) unless they have the images'
  shape with `channels` channels.

  Called op by op (not under jit), the output shape is first found by tracing, so images the model
  cannot reconstruct (28x28) are refused at once rather than after a whole forward pass.
  """
  run = lambda: apply_fn({"params": params}, images_BHWC)
  if isinstance(images_BHWC, jax.core.Tracer):  # Under jit: checked once traced, at no cost.
    outputs = run()
    check_output(outputs, images_BHWC, channels)
    return outputs
  check_output(jax.eval_shape(run), images_BHWC, channels)  # Op by op: before anything runs.
  return run()


def check_output(outputs_BHWC, images_BHWC, channels: int) -> None:
  expected = (*images_BHWC.shape[:3], channels)
  if outputs_BHWC.shape != expected:
    raise ValueError(f"Expected {_EXPECTED}; got {images_BHWC.dtype} {list(images_BHWC.shape)}, "
                     f"for which the model returns {list(outputs_BHWC.shape)} instead of "
                     f"{list(expected)}.")
