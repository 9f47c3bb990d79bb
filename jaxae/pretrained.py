"""A params file ready to use: the model, its parameters, its task and its config, in one call.

    model = jaxae.load_model("results/separate_unet_digit28/params.msgpack")
    out = jax.jit(model.predict)(model.params, mixtures_BHWC)   # {"digit": ..., "photo": ...}

For inference and transformations, not for resuming training (a run's checkpoints do that): no
optimizer and no learning-rate schedule is built, so a file of a cosine-schedule run needs no
`steps_per_epoch`. The layers are computed the way this platform computes every JAX
transformation (`conv_impl="auto"`: the forward-mode-capable GEMMs on CPU, XLA's convolutions on
an accelerator), whatever formulation the run trained with: every formulation computes the same
function, so a published file's metrics reproduce (tests/test_pretrained.py).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.config import Config
from jaxae.models import model_from_config
from jaxae.preprocess import value_range
from jaxae.tasks import task_from_config
from jaxae.tasks.base import check_images
from jaxae.weights import load_params


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """What a params file holds, ready to run.

  Attributes:
    model: the flax Module (`model.apply({"params": params}, images_BHWC)` gives its raw outputs).
    params: its parameters (jax arrays; one replica's, see `load_model`).
    task: the task it was trained for (jaxae/tasks/): turns outputs into predictions.
    config: the run's Config, with `conv_impl="auto"`.
  """

  model: nn.Module
  params: Any
  task: Any
  config: Config

  def predict(self, params: Any, images_BHWC: jax.Array) -> dict[str, jax.Array]:
    """The task's predictions for normalized mean images [B, 32, 32, 3], given `params`.

    A pure function of its arguments (params first, so jax.grad, jax.jvp and jax.vmap see them):
    reconstruct gives {"reconstructions"}, separate {"digit", "photo"} in [0, 1] units.
    Warns (under jit and vmap too) when the images lie far outside what `mean_images` produces
    with the file's normalization, as 0-255 or unnormalized images do: the output would be a
    number with no meaning.
    """
    low, high = value_range(self.config.mnist_normalization, self.config.cifar_normalization)
    margin = 2 * float((high - low).max())  # Wide: noisy or augmented images pass.
    images_BHWC = jnp.asarray(images_BHWC)
    jax.debug.callback(_warn_if_outside, jnp.min(images_BHWC), jnp.max(images_BHWC),
                       float(low.min()) - margin, float(high.max()) + margin)
    return self.task.predict(self.model.apply, params, images_BHWC)

  def encode(self, params: Any, images_BHWC: jax.Array) -> jax.Array:
    """The autoencoder's latent code [B, 4, 4, 64] of normalized mean images (pure, as
    `predict`). Models with skip connections (the U-Net) have no code of their own: ValueError."""
    part = self._part("encode")
    check_images(jnp.asarray(images_BHWC))
    return self.model.apply({"params": params}, images_BHWC, method=part)

  def decode(self, params: Any, latent_BHWC: jax.Array) -> jax.Array:
    """The autoencoder's decoder: normalized mean images [B, 32, 32, 3] of a latent code."""
    part = self._part("decode")
    latent_BHWC = jnp.asarray(latent_BHWC)
    width = self.config.features[-1]
    if (latent_BHWC.ndim != 4 or latent_BHWC.shape[-1] != width
        or not jnp.issubdtype(latent_BHWC.dtype, jnp.floating)):
      # Else flax names a kernel's shape, not the latent's.
      raise ValueError(f"decode takes float latent codes [B, h, w, {width}], as encode returns "
                       f"them; got {latent_BHWC.dtype} {list(latent_BHWC.shape)}.")
    return self.model.apply({"params": params}, latent_BHWC, method=part)

  def _part(self, name: str) -> str:
    if not hasattr(self.model, name):
      raise ValueError(f"the {self.config.model!r} model has no {name}r of its own (its skip "
                       "connections join the two halves); only the autoencoder ('seed') has.")
    return name


def _warn_if_outside(smallest, largest, low, high):
  if not (low <= smallest and largest <= high):  # NaN fails both comparisons, so it warns too.
    warnings.warn(f"jaxae: images in [{float(smallest):.4g}, {float(largest):.4g}], far outside "
                  f"the normalized mean images the model was trained on (about "
                  f"[{low:.2f}, {high:.2f}] at most): normalize them as the file's config says "
                  "(jaxae.preprocess.mean_images); the predictions are not meaningful.",
                  UserWarning, stacklevel=2)


def load_model(path: str | os.PathLike, *, replica: int | None = None) -> LoadedModel:
  """The model of a params file (`save_params`, a run's or results/*'s params.msgpack).

  A file of several seeds needs `replica=k` (its seed + k), unless the caller wants the stacked
  parameters to vmap over (then `params` has a leading replica axis).

  Raises:
    ParamsFileError: the file cannot be read, is not a params file, or does not fit its config.
  """
  params, config = load_params(path, replica=replica)
  task = task_from_config(config)
  return LoadedModel(model=model_from_config(config, task.out_channels), params=params,
                     task=task, config=config)
