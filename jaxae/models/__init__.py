"""The model family: every model maps normalized mean images [B, 32, 32, 3] to a task's output.

    "seed": the original experiment's autoencoder (jaxae/models/autoencoder.py).
    "unet": a U-Net-style encoder-decoder with skip connections (jaxae/models/unet.py).

All share PyTorch's layer semantics and initialization (jaxae/models/layers.py), every conv
formulation of jaxae/conv.py, and `Config.features` as their widths per resolution level.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxae import platforms
from jaxae.config import Config
from jaxae.models.autoencoder import Autoencoder
from jaxae.models.layers import TorchConv, TorchConvTranspose, make_activation, torch_uniform_init
from jaxae.models.unet import UNet

MODELS = {"seed": Autoencoder, "unet": UNet}


def check_model_names(config: Config) -> None:
  """Raises ValueError (one line, naming the field) unless the config's model and formulation
  are known."""
  if config.model not in MODELS:
    raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {config.model!r}.")
  platforms.check_conv_impl_choice(config.conv_impl)


def model_from_config(config: Config, out_channels: int = 3):
  """The config's model with `out_channels` outputs (the task's, see jaxae/tasks/).

  `conv_impl="auto"` becomes the default backend's formulation with every transformation
  (jaxae/platforms.py); a training run resolves it before, to its own choice.
  One object per distinct model, so that states built from equal configs share their `apply_fn`
  (a static part of the TrainState, and so of every jit cache key).
  """
  check_model_names(config)
  conv_impl = platforms.resolve_conv_impl(config.conv_impl, jax.default_backend())
  return _model(config.model, tuple(config.features), out_channels, config.activation,
                config.negative_slope, conv_impl, config.gemm_dtype)


@functools.cache
def _model(name, features, out_channels, activation, negative_slope, conv_impl, gemm_dtype):
  return MODELS[name](features=features, out_channels=out_channels, activation=activation,
                      negative_slope=negative_slope, conv_impl=conv_impl,
                      operand_dtype=None if gemm_dtype == "float32" else jnp.dtype(gemm_dtype))


__all__ = ["Autoencoder", "MODELS", "check_model_names", "forward_flops", "TorchConv",
           "TorchConvTranspose", "UNet", "make_activation", "model_from_config",
           "torch_uniform_init"]


def forward_flops(state) -> float:
  """FLOPs of the state's model on one image (forward), by XLA's cost analysis of its program."""
  image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  lowered = jax.jit(lambda p, x: state.apply_fn({"params": p}, x)).lower(state.params, image)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0
