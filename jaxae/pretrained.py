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
from typing import Any

import flax.linen as nn
import jax

from jaxae.config import Config
from jaxae.models import model_from_config
from jaxae.tasks import task_from_config
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
    """
    return self.task.predict(self.model.apply, params, images_BHWC)


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
