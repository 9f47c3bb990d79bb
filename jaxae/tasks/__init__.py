"""What a run learns and how it is scored: its examples, the model's head, the loss and the metrics.

    "reconstruct" (reconstruct.py): the original experiment. Examples are the normalized mean
        images; the model reproduces them; MSE loss; SSIM/PSNR of the reconstructions.
    "separate" (separate.py): undo the mixture. The model sees the mean image only and estimates
        its MNIST digit and its CIFAR-10 photo; SSIM/PSNR per source.

Every task implements `Task` (base.py); `task_from_config` builds the config's.
"""

from __future__ import annotations

from jaxae.config import Config
from jaxae.tasks.base import IMAGE_SHAPE, Task
from jaxae.tasks.reconstruct import Reconstruct, per_example_mse
from jaxae.tasks.separate import (LOG_MSE_FLOOR, SEPARATION_LOSSES, SEPARATIONS, Separate,
                                  resized_digit)

__all__ = ["IMAGE_SHAPE", "LOG_MSE_FLOOR", "RECONSTRUCT", "Reconstruct", "SEPARATION_LOSSES",
           "SEPARATIONS", "Separate", "TASKS", "Task", "check_task_names", "per_example_mse",
           "resized_digit", "task_from_config"]

TASKS = {"reconstruct": Reconstruct, "separate": Separate}
RECONSTRUCT = Reconstruct()


def check_task_names(config: Config) -> None:
  """Raises ValueError (one line, naming the field) unless the config's task names are known."""
  for field, names in (("task", sorted(TASKS)), ("separation", SEPARATIONS),
                       ("separation_loss", SEPARATION_LOSSES)):
    value = getattr(config, field)
    if value not in names:
      raise ValueError(f"{field} must be one of {', '.join(names)}, got {value!r}.")


def task_from_config(config: Config) -> Task:
  """The config's task (Config.task), with its normalizations (and separation formulation)."""
  check_task_names(config)
  norms = dict(mnist_normalization=config.mnist_normalization,
               cifar_normalization=config.cifar_normalization)
  if config.task == "separate":
    return Separate(separation=config.separation, loss_kind=config.separation_loss, **norms)
  return Reconstruct(**norms)
