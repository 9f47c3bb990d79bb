"""Trained parameters as files: jaxae's own (with their config), and PyTorch's state_dicts.

    model = load_model("results/corrected_5seeds/params.msgpack", replica=0)  # To use it.
    params, config = load_params("results/corrected_5seeds/params.msgpack", replica=0)
    state = create_train_state(jax.random.key(0), config).replace(params=params)  # To train on.

    params = from_torch_state_dict({k: v.numpy() for k, v in net.state_dict().items()})

A params file is Flax msgpack (`flax.serialization`) of {"format", "version", "config": the run's
Config as JSON, "params": the model's parameters}. A run of several seeds stores its replicas'
parameters stacked on a leading axis of `config.num_seeds`; `load_params(path, replica=k)` gives
one of them.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxae.files import write_atomically
from jaxae.config import Config, without_removed_options
from jaxae.models import model_from_config
from jaxae.tasks import IMAGE_SHAPE, task_from_config

FORMAT = "jaxae.params"
VERSION = 1


class ParamsFileError(ValueError):
  """A params file (or state_dict) that cannot be used; the message says why, in one line."""


def save_params(path: str | os.PathLike, params: Any, config: Config) -> None:
  """Writes `params` (one model's, or `config.num_seeds` stacked replicas') with their config,
  whole or not at all (files.write_atomically)."""
  payload = {"format": FORMAT, "version": VERSION, "config": json.dumps(config.to_dict()),
             "params": jax.tree.map(on_host, params)}
  _check_shapes(params, config, str(path))
  data = serialization.msgpack_serialize(payload)
  write_atomically(path, lambda f: f.write(data))


def on_host(x) -> np.ndarray:
  """A parameter as float32 NumPy, from any process of a multi-process run."""
  # A multi-process run's arrays are replicated but not fully addressable: any shard is all of it.
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x, np.float32)


def load_params(path: str | os.PathLike, replica: int | None = None) -> tuple[Any, Config]:
  """(params, config) from a file of `save_params`; params are jax arrays.

  The config is the run's, with `conv_impl="auto"` (the formulation of this platform).
  `jaxae.load_model` gives the model ready to run; to train on from the params, pass
  `create_train_state` the new run's `steps_per_epoch` if the config's schedule decays.

  With `replica=k`, a file of several seeds gives replica k's parameters and a single-seed config
  (seed + k); without it, its stacked parameters and config as saved.

  Raises:
    ParamsFileError: the file is missing, not a jaxae params file, or its parameters do not fit
      its config's model.
  """
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise ParamsFileError(f"cannot read {path} ({e.strerror or e}).") from None
  try:
    payload = serialization.msgpack_restore(raw)
  except Exception:  # pylint: disable=broad-except  # msgpack raises several kinds.
    payload = None
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise ParamsFileError(f"{path} is not a jaxae params file (written by save_params, "
                          "experiments/train.py or experiments/export_params.py).")
  if payload.get("version") != VERSION:
    raise ParamsFileError(f"{path} is a version {payload.get('version')} params file; this "
                          f"jaxae reads version {VERSION}.")
  try:
    recorded = without_removed_options(json.loads(payload["config"]), trained=True)
    # How the run computed its layers was a speed choice for its platform, not part of the model
    # (every formulation computes the same function): here, this platform's choice.
    config = Config.from_dict(recorded).replace(conv_impl="auto")
    expected_shapes(config)  # A model or task this jaxae does not know.
  except (ValueError, TypeError, KeyError, RecursionError) as e:
    raise ParamsFileError(f"{path} holds an unusable config: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  params = payload["params"]  # NumPy arrays: choosing a replica here compiles nothing.
  _check_shapes(params, config, str(path))
  _check_values(params, str(path))
  if replica is not None:
    if config.num_seeds == 1:
      if replica != 0:
        raise ParamsFileError(f"{path} holds one seed; replica={replica} does not exist.")
    elif not 0 <= replica < config.num_seeds:
      raise ParamsFileError(f"{path} holds {config.num_seeds} replicas; replica={replica} is "
                            f"not one of 0..{config.num_seeds - 1}.")
    else:
      params = jax.tree.map(lambda x: x[replica], params)
      config = config.replace(seed=config.seed + replica, num_seeds=1)
  return jax.tree.map(jnp.asarray, params), config


@functools.cache
def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
  """Parameter path -> shape of the config's model (one replica), without computing anything.

  Cached per config: treat the dict as read-only.
  """
  model = model_from_config(config, task_from_config(config).out_channels)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
  return {_key(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(abstract["params"])}


def param_shapes(params: Any) -> dict[str, tuple[int, ...]]:
  """Parameter path -> shape of a params tree (arrays, or tracers under jit)."""
  return {_key(path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _check_shapes(params: Any, config: Config, where: str) -> None:
  lead = (config.num_seeds,) if config.num_seeds > 1 else ()
  expected = {k: lead + v for k, v in expected_shapes(config).items()}
  got = param_shapes(params)
  if got != expected:
    differing = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    k = differing[0]
    raise ParamsFileError(f"{where}: the parameters do not fit the config's model "
                          f"({config.model} {list(config.features)}): {k} is "
                          f"{got.get(k, 'missing')}, the model needs {expected.get(k, 'none')}.")


def _check_values(params: Any, where: str) -> None:
  """ParamsFileError unless every parameter is a finite real floating-point number: a model of
  integers, NaN or infinities would be scored as if trained."""
  for key_path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    x = np.asarray(x)
    if x.dtype.kind != "f" and x.dtype != jnp.bfloat16:
      raise ParamsFileError(f"{where}: {_key(key_path)} holds {x.dtype} values; parameters are "
                            "real floating-point numbers.")
    if not np.isfinite(x).all():
      raise ParamsFileError(f"{where}: {_key(key_path)} holds NaN or infinite values; these "
                            "parameters cannot be scored.")


def _key(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def from_torch_state_dict(state_dict: Mapping[str, Any], config: Config | None = None) -> Any:
  """The "seed" model's params from the original PyTorch model's `state_dict` (NumPy arrays).

  The original is `nn.Sequential(Conv2d, LeakyReLU, ..., ConvTranspose2d)` (or any module whose
  state_dict lists its convolutions in order, encoder first): its weight/bias pairs are taken in
  order and mapped onto enc0.., dec0.. (kernels to HWIO, jaxae/models/layers.py). Pass arrays,
  not tensors (`{k: v.numpy() for k, v in net.state_dict().items()}`), so torch is not needed.

  Raises:
    ParamsFileError: the config's model is not "seed", or the state_dict's layers do not match
      its widths (the key and both shapes are named).
  """
  config = config or Config()
  _check_original(config)
  layers = _layers_in_order(config)
  expected = expected_shapes(config)
  keys = list(state_dict)
  if all(TORCH_KEY.fullmatch(k) for k in keys):  # The notebook's layout, in any order (safetensors
    keys.sort(key=_torch_key_order)              # files list their keys alphabetically).
  weights = [k for k in keys if k.endswith("weight")]
  biases = [k for k in keys if k.endswith("bias")]
  if len(weights) != len(layers) or len(biases) != len(layers):
    raise ParamsFileError(f"the state_dict has {len(weights)} weights and {len(biases)} biases; "
                          f"the model ({list(config.features)}) has {len(layers)} layers.")
  params: dict[str, dict[str, jax.Array]] = {}
  for layer, w_key, b_key in zip(layers, weights, biases):
    name = layer.split("/")[0]
    w, b = np.asarray(state_dict[w_key], np.float32), np.asarray(state_dict[b_key], np.float32)
    # Conv2d.weight is [out, in, kh, kw]; ConvTranspose2d.weight [in, out, kh, kw].
    kernel = w.transpose(2, 3, 1, 0) if name.startswith("enc") else w.transpose(2, 3, 0, 1)
    if kernel.shape != expected[layer] or b.shape != expected[f"{name}/bias"]:
      torch_shape = (tuple(np.array(expected[layer])[[3, 2, 0, 1]]) if name.startswith("enc")
                     else tuple(np.array(expected[layer])[[2, 3, 0, 1]]))
      raise ParamsFileError(f"state_dict[{w_key!r}] has shape {w.shape} (bias {b.shape}); layer "
                            f"{name} needs {torch_shape} (bias {expected[f'{name}/bias']}).")
    params[name] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(b)}
  return params


# The original notebook's module: encoder and decoder as nn.Sequential, a LeakyReLU between
# layers, so the convolutions are items 0, 2, 4 of each.
TORCH_KEY = re.compile(r"(encoder|decoder)\.(\d+)\.(weight|bias)")


def to_torch_state_dict(params: Any, config: Config) -> dict[str, np.ndarray]:
  """The "seed" model's params in the original notebook's layout (NumPy float32 arrays):
  `encoder.0.weight`, `encoder.0.bias`, `encoder.2.…`, …, `decoder.4.bias`, which its
  autoencoder class (docs/weights.md) loads with `load_state_dict(..., strict=True)`.

  The inverse of `from_torch_state_dict`, bit for bit.

  Raises:
    ParamsFileError: the config's model is not the original's (a U-Net has no such layout).
  """
  _check_original(config)
  _check_shapes(params, config, "params")
  state_dict = {}
  for name in _layers_in_order(config):
    layer = name.split("/")[0]
    part = "encoder" if layer.startswith("enc") else "decoder"
    index = 2 * int(re.sub(r"\D", "", layer))
    kernel = on_host(params[layer]["kernel"])
    # HWIO to Conv2d's [out, in, kh, kw], or to ConvTranspose2d's [in, out, kh, kw].
    weight = kernel.transpose(3, 2, 0, 1) if part == "encoder" else kernel.transpose(2, 3, 0, 1)
    state_dict[f"{part}.{index}.weight"] = np.ascontiguousarray(weight)
    state_dict[f"{part}.{index}.bias"] = on_host(params[layer]["bias"])
  return state_dict


def _check_original(config: Config) -> None:
  if config.model != "seed" or config.task != "reconstruct" or config.num_seeds != 1:
    raise ParamsFileError("a PyTorch state_dict maps onto the original model only "
                          "(model='seed', task='reconstruct', one replica), got "
                          f"model={config.model!r}, task={config.task!r}"
                          + (f", num_seeds={config.num_seeds}" if config.num_seeds != 1 else "")
                          + ".")


def _layers_in_order(config: Config) -> list[str]:
  """The kernels' paths, encoder first, each part in order (enc0, enc1, ..., dec0, ...)."""
  layers = [name for name in expected_shapes(config) if name.endswith("/kernel")]
  return sorted(layers, key=lambda n: (not n.startswith("enc"),
                                       int(re.sub(r"\D", "", n.split("/")[0]))))


def _torch_key_order(key: str):
  part, index, kind = TORCH_KEY.fullmatch(key).groups()
  return part != "encoder", int(index), kind
