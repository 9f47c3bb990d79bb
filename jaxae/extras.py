"""The optional parts of jaxae and the extras of pyproject.toml that install them.

`pip install .` brings what `import jaxae` and the pure library need (the steps, models,
metrics, `load_model`, checkpoints); the rest is imported where it is used, through `load`, so that
a missing package is one line naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# What each extra is for (pyproject.toml lists its packages).
EXTRAS = {
    "data": "reading MNIST and CIFAR-10 (jaxae.load_mixed, the experiment scripts)",
    "run": "the experiment scripts: config files, figures, TensorBoard event files",
    "export": "exporting models to PyTorch's safetensors and ONNX (experiments/export.py)",
}

# The modules each extra brings, with their PyPI names.
MODULES = {
    "data": {"tensorflow_datasets": "tensorflow-datasets", "array_record": "array_record",
             "cv2": "opencv-python-headless"},
    "run": {"matplotlib": "matplotlib", "tensorboardX": "tensorboardX"},
    "export": {"safetensors": "safetensors", "jax2onnx": "jax2onnx"},
}


class MissingExtraError(ImportError):
  """A package of an extra that is not installed; the message names the extra."""


def load(module: str, extra: str) -> ModuleType:
  """`import module` (a module of one of `extra`'s packages), or MissingExtraError naming it."""
  top = module.split(".")[0]
  try:
    return importlib.import_module(module)
  except ImportError as e:
    what = "is not installed" if _absent(top) else f"could not be imported ({e})"
    raise MissingExtraError(_message(MODULES[extra][top], what, extra)) from None


def _message(package: str, what: str, extra: str) -> str:
  return (f"{package} {what}; it comes with jaxae's {extra!r} extra, for {EXTRAS[extra]}: "
          f"pip install -e '.[{extra}]' in jaxae's checkout.")


def require(*names: str) -> None:
  """MissingExtraError unless every package of the extras `names` is installed (looked up, not
  imported): a script asks before it does any work."""
  for extra in names:
    for module, package in MODULES[extra].items():
      if _absent(module):
        raise MissingExtraError(_message(package, "is not installed", extra))


def _absent(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is None
  except (ImportError, ValueError):
    return True
