"""Experiment configuration: one frozen dataclass, defaults = the original experiment."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalization:
  """Per-channel `(x - mean) / std`, applied to images already scaled to [0, 1]."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def __post_init__(self):
    if len(self.mean) != 3 or len(self.std) != 3:
      raise ValueError(f"Normalization needs 3 means and 3 stds, got {self.mean}, {self.std}.")
    if not all(math.isfinite(s) and s > 0 for s in self.std):  # NaN <= 0 is False too.
      raise ValueError(f"Normalization stds must be positive and finite, got {self.std}.")
    if not all(math.isfinite(m) for m in self.mean):
      raise ValueError(f"Normalization means must be finite, got {self.mean}.")


# The original's conventions: ImageNet statistics for MNIST, 0.5/0.5 for CIFAR-10.
MNIST_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CIFAR_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a training run's numbers.

  Two runs with equal configs (and equal data) produce equal histories.
  """

  # What is learned (jaxae/tasks/): "reconstruct" (the original experiment) or "separate"
  # (estimate the digit and the photo of each mean image).
  task: str = "reconstruct"
  # How "separate" makes its estimate consistent with the mean image: "digit" (predict the grey
  # digit; photo = what the mean leaves), "project" (predict both, project) or "digit28" (as
  # "digit", the digit made a resized 28x28 digit in [0, 1], as every true one);
  # jaxae/tasks/separate.py.
  separation: str = "digit"
  # The per-example loss of "separate": "log_mse" (log10 of digit MSE + photo MSE: the mean PSNR's
  # own weighting) or "mse". jaxae/tasks/separate.py says why.
  separation_loss: str = "log_mse"
  # Model (jaxae/models/): "seed" (the original autoencoder) or "unet" (with skip connections).
  model: str = "seed"
  # Channel widths per resolution level, 32x32 first (both models halve the side per level).
  features: tuple[int, ...] = (16, 32, 64)
  activation: str = "leaky_relu"
  negative_slope: float = 0.01
  # How the Conv and ConvTranspose layers are computed (jaxae/conv.py): "gemm" (fast on CPU, every
  # JAX transformation), "gemm_vjp" (fastest to train on CPU, no forward mode) or "reference"
  # (XLA's convolutions: cuDNN on GPU). All compute PyTorch's layers with the same weights.
  # "auto": the platform's (jaxae/platforms.py): the GEMMs on CPU and GPU, XLA's on TPU.
  conv_impl: str = "auto"
  # The dtype the layers' GEMM operands are rounded to: "float32" (none rounded) or "bfloat16"
  # (products summed in float32; activations and parameters stay float32), which GEMM units with
  # AMX, AVX512-BF16 or a GPU's tensor cores run several times faster. It changes the numbers.
  gemm_dtype: str = "float32"
  # Optimizer.
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  # "constant" (the original's) or "cosine": linear warmup over warmup_steps, then cosine decay
  # to 0 at the end of the last epoch (jaxae/optimizers.py).
  lr_schedule: str = "constant"
  warmup_steps: int = 0
  # optimizer="muon" (jaxae/optimizers.py): the convolution kernels' learning rate, their updates
  # orthogonalized (Muon); learning_rate is then Adam's, for the biases. 0 with other optimizers.
  muon_learning_rate: float = 0.0
  # 0 = off (the original's). Clip each step's gradient to this global L2 norm.
  grad_clip_norm: float = 0.0
  # 0 = off (the original's). Decoupled weight decay (AdamW's): each step every parameter shrinks
  # by learning rate x weight_decay x its value.
  weight_decay: float = 0.0
  # Procedure.
  epochs: int = 50
  batch_size: int = 32
  seed: int = 0
  # Independent replicas trained as one program (jaxae/seeds.py): seeds seed, ..., seed+N-1.
  num_seeds: int = 1
  # The original's procedure: one optimizer step on the whole training set per epoch.
  full_batch: bool = False
  # Each device sums a step's gradient over microbatches of this many examples (and the
  # full-batch step over chunks of it): 0 = the fastest, measured where the run runs
  # (jaxae/run/choices.py). It changes the floating-point order, not the step: pass a run's
  # recorded value (metrics.json, "platform_choices") to reproduce it to the bit.
  microbatch: int = 0
  # Data conventions.
  mnist_normalization: Normalization = MNIST_NORMALIZATION
  cifar_normalization: Normalization = CIFAR_NORMALIZATION

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)

  def validate(self) -> "Config":
    """Returns self, or raises ValueError naming the first field of the wrong type or range.

    Which names a field may hold (tasks, models, optimizers, ...) is checked by the module that
    defines them; `jaxae.steps.check_config` runs this and all of those.
    """
    def need(ok: bool, field: str, what: str) -> None:
      if not ok:
        raise ValueError(f"{field} must be {what}, got {getattr(self, field)!r}.")

    need(isinstance(self.features, tuple) and len(self.features) > 0
         and all(_is_int(f) and f > 0 for f in self.features), "features",
         "a non-empty sequence of positive integers")
    need(isinstance(self.features, tuple) and len(self.features) <= MAX_LEVELS, "features",
         f"at most {MAX_LEVELS} widths (32x32 images halve to 1x1 after {MAX_LEVELS} levels)")
    # The names (task, model, conv_impl, optimizer, ...) are checked by the modules that own
    # them, which import this one (jaxae.steps.check_config runs every check).
    for name in ("task", "separation", "separation_loss", "model", "activation", "conv_impl",
                 "optimizer", "lr_schedule"):
      need(isinstance(getattr(self, name), str), name, "a string")
    need(self.gemm_dtype in GEMM_DTYPES, "gemm_dtype", " or ".join(map(repr, GEMM_DTYPES)))
    need(_is_finite(self.negative_slope), "negative_slope", "a finite number")
    need(_is_finite(self.learning_rate) and self.learning_rate > 0, "learning_rate",
         "a positive finite number")
    for name in ("grad_clip_norm", "weight_decay", "muon_learning_rate"):
      need(_is_finite(getattr(self, name)) and getattr(self, name) >= 0, name,
           "0 (off) or a positive finite number")
    need(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps",
         "a non-negative integer")
    need(_is_int(self.epochs) and self.epochs > 0, "epochs", "a positive integer")
    need(_is_int(self.batch_size) and self.batch_size > 0, "batch_size", "a positive integer")
    # JAX keys take 32-bit seeds: 2**32 would silently repeat seed 0, and -1 seed 2**32 - 1.
    need(_is_int(self.seed) and 0 <= self.seed <= MAX_SEED, "seed",
         f"an integer in 0..{MAX_SEED} (JAX keys take 32-bit seeds)")
    need(_is_int(self.num_seeds) and self.num_seeds >= 1, "num_seeds", "a positive integer")
    need(self.seed + self.num_seeds - 1 <= MAX_SEED, "num_seeds",
         f"at most {MAX_SEED + 1} - seed (the replicas' seeds seed..seed+num_seeds-1 are 32-bit)")
    need(isinstance(self.full_batch, bool), "full_batch", "true or false")
    need(_is_int(self.microbatch) and self.microbatch >= 0, "microbatch",
         "0 (measured) or a positive integer")
    for name in ("mnist_normalization", "cifar_normalization"):
      need(isinstance(getattr(self, name), Normalization), name, "a Normalization")
    return self

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Config":
    """The config of `to_dict` (e.g. a run's settings.json), its types and ranges validated.

    Raises:
      ValueError: a field of the wrong type or out of range (one line, naming it).
    """
    d = without_removed_options(d)
    for key in ("mnist_normalization", "cifar_normalization"):
      if key in d:
        norm = d[key]
        if not (isinstance(norm, dict) and isinstance(norm.get("mean"), (list, tuple))
                and isinstance(norm.get("std"), (list, tuple))
                and all(is_number(v) for v in (*norm["mean"], *norm["std"]))):
          raise ValueError(f"{key} must be {{\"mean\": [3 numbers], \"std\": [3 numbers]}}, "
                           f"got {norm!r}.")
        try:
          d[key] = Normalization(mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        except ValueError as e:
          raise ValueError(f"{key}: {e}") from None
    if isinstance(d.get("features"), (list, tuple)):
      d["features"] = tuple(d["features"])
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known}).validate()


def to_config_dict(config: Config):
  """The config as an `ml_collections.ConfigDict` (what a config file's `get_config()` returns).

  Every field, nested normalizations included, so that each can be overridden on the command line
  (`--config.learning_rate=3e-4`, `--config.mnist_normalization.mean='(0.5, 0.5, 0.5)'`).
  """
  from ml_collections import config_dict  # pylint: disable=g-import-not-at-top
  return config_dict.ConfigDict(config.to_dict())


def from_config_dict(cfg) -> Config:
  """The Config (types and ranges validated) of a ConfigDict from `to_config_dict` (or a config
  file), overrides and all.

  Raises:
    ValueError: a field of the wrong type or out of range, or one Config does not have (named).
  """
  d = without_removed_options(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
  if unknown := sorted(set(d) - {f.name for f in dataclasses.fields(Config)}):
    raise ValueError(f"{unknown[0]} is not a Config field (jaxae/config.py lists them).")
  return Config.from_dict(d)


# Options that their own results rejected (RESULTS.md, "Separation"): name -> (the value every
# run now has, the last commit that runs the others). Recorded configs (settings.json, params
# files) that hold the kept value read as before; any other value is refused, naming the commit.
REMOVED_OPTIONS = {
    # Re-pairing digits and photos each epoch did not lower the test loss, and diverged.
    "pairing": ("fixed", "3b809d9"),
    # The digit28 clip's inward gradient: no drift, but 0.06 dB lower than straight through.
    "digit28_gradient": ("straight", "3b809d9"),
}


def without_removed_options(d: dict[str, Any], *, trained: bool = False) -> dict[str, Any]:
  """A copy of config dict `d` without the removed options, which must hold their kept values.

  `trained=True`: `d` is the config of a trained model (a params file). The removed options only
  shaped how a model was trained, not the model, so any value reads.

  Raises:
    ValueError: `d` is not a dict, or holds a removed option at another value (one line: which,
      and the commit to use).
  """
  if not isinstance(d, dict):
    raise ValueError(f"a config must be a JSON object, got {type(d).__name__}.")
  d = dict(d)
  for name, (kept, commit) in REMOVED_OPTIONS.items():
    value = d.pop(name, kept)
    if value != kept and not trained:
      raise ValueError(f"{name}={value!r} was removed (its results did not justify it; "
                       f"RESULTS.md); `git checkout {commit}` runs it.")
  return d


MAX_SEED = 2 ** 32 - 1
GEMM_DTYPES = ("float32", "bfloat16")
MAX_LEVELS = 5


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
  """A real number, Python's or NumPy's, and not a bool."""
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_finite(x: Any) -> bool:
  """A number that is neither infinite nor NaN (1e400 parses as inf)."""
  return is_number(x) and math.isfinite(x)
