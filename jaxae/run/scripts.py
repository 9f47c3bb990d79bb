"""Shared pieces of the experiment scripts: one-line errors, data checks, timed loading, a run's
checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import signal
import sys
import tempfile
import time
from typing import Callable, NoReturn, Sequence

import jax

from jaxae import seeds
from jaxae.extras import MissingExtraError
from jaxae.config import REMOVED_OPTIONS, Config, from_config_dict
from jaxae.dataset import MixedSplit, load_mixed
from jaxae.run.checkpoints import Checkpointer, IncompatibleCheckpointError, NoUsableCheckpointError
from jaxae.run.errors import RunError
from jaxae.run.provenance import host
from jaxae.run.workdir import CHECKPOINT_DIR, SETTINGS_FILE, jaxae_checkpoints
from jaxae.sources import (DataError, default_cache_dir, prepare_command, prepared_files,
                           resolve_data_dir)
from jaxae.steps import check_config

# The named experiments' config files, in a checkout.
_REPO = pathlib.Path(__file__).resolve().parents[2]  # jaxae/run/ -> the checkout
_CONFIGS = _REPO / "experiments" / "configs"
_HELP_FLAGS = ("--help", "-help", "--helpshort", "--helpfull", "-h", "-?", "--helpxml")


def run(main: Callable[[list[str]], None], interrupted: str = "interrupted.") -> None:
  """`absl.app.run(main)` with the scripts' error conventions.

  A flag that does not parse is one line and exit 2 (absl alone prints usage and exits 1);
  --help exits 0; Ctrl-C prints `interrupted` in one line and exits 130; a missing extra
  (jaxae/extras.py) is one line naming it, exit 2; a RunError its line and exit code; standard
  output that went away (`| head -1`), as `say` has it, wherever the script printed.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  def leave(*_):
    # Leave at once, as kill -9 would (resuming after it is tested): orbax's and tensorstore's
    # background threads may be mid-write, and at interpreter shutdown they print tracebacks
    # (asyncio's "Event loop is closed"). Finished checkpoints are complete on disk.
    print(f"error: {interrupted}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)  # pylint: disable=protected-access

  def guarded(argv):
    # Ctrl-C leaves from the signal handler itself: Python's KeyboardInterrupt is lost when it
    # is raised inside a garbage-collector callback (JAX has one) or a __del__. A checkpoint
    # write defers it to its end (checkpoints._deferred_interrupt), then calls this handler.
    signal.signal(signal.SIGINT, leave)
    try:
      main(argv)
    except KeyboardInterrupt:  # Raised by code that replaced the handler for a while.
      leave()
    except MissingExtraError as e:  # A package this script needs is not installed.
      fail(str(e))
    except BrokenPipeError as e:  # A print of the script's, absl's (--help) or a library's.
      error = _output_gone(e)
      fail(str(error), error.exit_code)
    except RunError as e:
      fail(str(e), e.exit_code)

  app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  from absl import flags  # pylint: disable=g-import-not-at-top
  # ml_collections warns of a get_config() that returned None while the flags parse, a line
  # before config_from_flag's own one-line error.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  asked_for_help = any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:])
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    fail(f"{' '.join(str(e).split())} (--help lists the flags).")
  except AttributeError as e:  # With --config=<file>, its overrides are checked here.
    _unknown_field(e, argv)
  except Exception as e:  # pylint: disable=broad-except  # A --config file that fails to run.
    if isinstance(e, OSError) and asked_for_help:
      error = _output_gone(e)  # absl prints the help while the flags parse.
      if isinstance(e, BrokenPipeError):
        sys.exit(0)  # `--help | head` took the lines it wanted: the help was given.
      fail(str(error), error.exit_code)
    if not any(a.startswith("--config=") for a in argv[1:]):
      raise
    _unloadable_config(e, argv)
  except SystemExit as e:
    if asked_for_help:
      sys.exit(0 if e.code == 1 else e.code)  # absl exits 1 after printing the help asked for.
    if any(a.startswith("--config=") for a in argv[1:]) and e.code in (0, None):
      # A --config file that exits while it loads: no config, and no run that says so.
      _unloadable_config(e, argv)
    raise
  finally:
    absl_logger.setLevel(level)


def define_config_flag(default_file: pathlib.Path):
  """`--config=<file.py>` (whose `get_config()` returns a ConfigDict, as in the Flax examples) and
  `--config.<field>=<value>` for every Config field; `config_from_flag` turns it into a Config.

  The named experiments are such files (experiments/configs/); `default_file` is used without
  `--config`.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return config_flags.DEFINE_config_file(
        "config", str(default_file), "A config file (experiments/configs/*.py; default "
        f"{default_file.name}); override any field with --config.<field>=<value>.",
        lock_config=True)
  except AttributeError as e:  # Without --config=<file>, the overrides are checked here.
    _unknown_field(e, sys.argv)


def _unknown_field(e: AttributeError, argv: Sequence[str]) -> NoReturn:
  """One line for ml_collections' error about a --config.<field> the config does not have."""
  message = str(e).replace("\\n", "\n")
  if "get_config" in message:  # A --config file without get_config().
    _unloadable_config(e, argv)
  field = next((a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and re.search(
      rf"\b{re.escape(a.split('=')[0].split('.')[-1])}\b", message)), "--config.<field>")
  if (name := field.removeprefix("--config.")) in REMOVED_OPTIONS:
    kept, commit = REMOVED_OPTIONS[name]
    fail(f"{field} was removed (its results did not justify it; RESULTS.md and docs/speed.md); "
         f"every run now uses {name}={kept!r}, and `git checkout {commit}` runs the option.")
  hint = message.splitlines()[-1].strip("'\" ") if "Did you mean" in message else ""
  fail(f"{field} is not a field of the config (jaxae/config.py lists them). {hint}".strip())


def _unloadable_config(e: BaseException, argv: Sequence[str]) -> NoReturn:
  path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), "(default)")
  reason = re.findall(r"\[Errno \d+\] [^:'\n]+", str(e))
  why = reason[-1] if reason else f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
  named = _CONFIGS / f"{path}.py"
  if "/" not in path and named.is_file():  # A config's name rather than its file.
    fail(f"--config={path} is not a file; did you mean --config={named.relative_to(_REPO)}?")
  fail(f"--config={path} could not be loaded ({why}); name a config file whose get_config() "
       "returns a ConfigDict, such as experiments/configs/corrected.py.")


def config_from_flag(holder) -> Config:
  """The validated Config of `--config` and its overrides, or a one-line exit naming the field."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    try:
      value = holder.value
    except flags.IllegalFlagValueError:  # absl's word for a get_config() that returned None.
      value = None
    if not hasattr(value, "to_dict"):
      path = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")),
                  "(default)")
      fail(f"--config={path} could not be loaded (its get_config() returned "
           f"{type(value).__name__}, not a ConfigDict); name a config file whose get_config() "
           "returns a ConfigDict, such as experiments/configs/corrected.py.")
    return check_config(from_config_dict(value))
  except ValueError as e:
    fail(f"--config.{e}")
  except OSError as e:  # ml_collections defers a --config file it could not find to here.
    _unloadable_config(e, sys.argv)


def start(argv: Sequence[str]) -> None:
  """The first lines of every script's main: no positional arguments; quiet library logs."""
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_logs()


def use_compilation_cache() -> pathlib.Path | None:
  """Keeps the programs XLA compiles in <cache>/xla/<this machine> (JAX's persistent compilation
  cache), so a script's next start loads them: the seed model's epoch program took 2.7 s to
  compile and 0.07 s to load on a 2-core CPU. A loaded program is the executable compiled, so no
  number changes. One folder per machine (CPU model and features): programs compiled for one
  CPU's instructions are not offered to another sharing the home directory. A cache the user
  set ($JAX_COMPILATION_CACHE_DIR) is left as it is. Returns the folder (None: the user's)."""
  if jax.config.jax_compilation_cache_dir:
    return None
  machine = json.dumps(host(), sort_keys=True).encode()
  folder = default_cache_dir() / "xla" / hashlib.sha256(machine).hexdigest()[:16]
  jax.config.update("jax_compilation_cache_dir", str(folder))
  return folder


def quiet_logs() -> None:
  """Keeps the scripts' output to their own lines: orbax and tfds log every step at INFO."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)


def say(line: str) -> None:
  """Prints a line of the script's output. Standard output that went away (`| head` closed its
  pipe, a full disk) is a RunError: one line on stderr, exit 1, after what completed was kept."""
  try:
    print(line, flush=True)
  except OSError as e:
    raise _output_gone(e) from None


def _output_gone(e: OSError) -> RunError:
  # What is still buffered would fail again at exit, with a traceback: it goes nowhere.
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)
  return RunError(f"cannot write to the standard output ({e.strerror or e}); what completed "
                  "is kept (a training run resumes from its checkpoints).", exit_code=1)


def fail(message: str, exit_code: int = 2) -> NoReturn:
  """Prints one clear line (no traceback) and exits."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def check_data_dir(data_dir: str | None) -> None:
  """Fails fast, before any work, if a dataset split is not prepared in data_dir."""
  try:
    resolved = resolve_data_dir(data_dir)
  except ValueError:  # An empty path, which would otherwise mean the current directory.
    fail("--data_dir is empty; leave it out to use $TFDS_DATA_DIR or ~/tensorflow_datasets, or "
         "name the directory.")
  for name in ("mnist", "cifar10"):
    for split in ("train", "test"):
      try:
        prepared = prepared_files(name, split, resolved)
      except DataError as e:
        fail(str(e))
      if not prepared:
        fail(f"--data_dir={resolved} does not hold the prepared {name} {split} split "
             f"(tfds ArrayRecord). Point --data_dir at the directory that does (on these "
             f"machines ../shared/tensorflow_datasets), or prepare it once with: "
             f"{prepare_command(name, resolved)}")


def check_writable(workdir: str) -> None:
  """Fails if workdir (or the nearest existing folder above it) cannot be written."""
  probe = pathlib.Path(workdir).absolute()
  while not probe.exists():  # A dangling symlink is refused by workdir.hold, in one line too.
    probe = probe.parent
  if problem := unwritable(probe):
    fail(f"--workdir={workdir} cannot be written ({problem}).")


def check_output_file(flag: str, value: str | None) -> None:
  """Fails (one line) unless --<flag>=<value> names a file that can be written: checked before a
  measurement, not after it."""
  if not value:
    return
  path = pathlib.Path(value).absolute()
  if path.is_dir():
    fail(f"--{flag}={value} is a directory; name a file.")
  if problem := unwritable(path.parent):
    fail(f"--{flag}={value} cannot be written ({problem}).")


def unwritable(folder: pathlib.Path) -> str | None:
  """Why `folder` cannot take a new file, or None if it can.

  It tries a write rather than trusting permission bits, which say yes to root even where a
  read-only mount or an immutable folder will refuse.
  """
  if not folder.is_dir():
    return f"{folder} is not a directory"
  try:
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    return f"{folder}: {e.strerror or e}"
  return None


def load_data(data_dir: str | None, config: Config, train_limit: int, test_limit: int,
              log=print, splits: Sequence[str] = ("train", "test")) -> dict[str, MixedSplit]:
  """`splits` of the data, preprocessed by the config and limited (--train_limit, --test_limit)."""
  start = time.perf_counter()
  try:
    loaded = load_mixed(data_dir, splits=splits, train_limit=train_limit, test_limit=test_limit,
                        mnist_normalization=config.mnist_normalization,
                        cifar_normalization=config.cifar_normalization)
  except DataError as e:
    fail(str(e))
  except ValueError as e:
    if not str(e).startswith(("train_limit=", "test_limit=")):
      raise
    fail(f"--{e}")  # The library's message names the keyword; the user gave the flag.
  for split in loaded.values():
    split.images.block_until_ready()
  log(f"Loaded and preprocessed {' and '.join(f'{len(s):,} {n}' for n, s in loaded.items())} "
      f"mean images in {time.perf_counter() - start:.1f} s.")
  return loaded


def run_config(workdir: pathlib.Path) -> Config:
  """The config of the run in `workdir` (its settings.json), or a one-line exit."""
  if not workdir.is_dir():
    fail(f"--workdir={workdir} {'is not a directory' if workdir.exists() else 'does not exist'}; "
         "name a training run's workdir (experiments/train.py --workdir=...).")
  if not jaxae_checkpoints(workdir):
    fail(f"{workdir} holds no checkpoint; train first with experiments/train.py "
         f"--workdir={workdir}.")
  try:
    return check_config(Config.from_dict(json.loads((workdir / SETTINGS_FILE).read_text())))
  except (OSError, ValueError, TypeError) as e:
    fail(f"{workdir / SETTINGS_FILE} cannot be used ({type(e).__name__}: "
         f"{str(e).splitlines()[0] if str(e) else ''}); it is written when "
         "experiments/train.py starts a run in this workdir.")


def restore_newest(workdir: pathlib.Path, config: Config):
  """The newest good checkpoint of the run in `workdir` (checkpoints.Restored), or one-line exit."""
  checkpointer = Checkpointer(workdir / CHECKPOINT_DIR)
  try:
    # A template for the restore: its values are replaced, so any steps_per_epoch will do.
    restored = checkpointer.restore_latest(seeds.create_train_states(config, steps_per_epoch=1))
  except (NoUsableCheckpointError, IncompatibleCheckpointError) as e:
    fail(str(e))
  finally:
    checkpointer.close()
  for note in restored.damaged:
    print(f"warning: {note}", file=sys.stderr, flush=True)
  return restored
