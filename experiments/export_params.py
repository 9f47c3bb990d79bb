"""Writes the parameters of a training run's newest checkpoint into a params file.

    python experiments/export_params.py --workdir=runs/original --output=corrected.msgpack

The file (jaxae/weights.py) holds the parameters and the run's config (its epochs: those of the
finished run's metrics.json, else the checkpoint's); read it back with
`params, config = jaxae.load_params(path)`, or evaluate it with experiments/evaluate.py --params.
A finished run writes <workdir>/params.msgpack itself; this is for a run's checkpoints (an
unfinished run, or one from before runs wrote it).
"""

import json
import pathlib

from absl import flags

from jaxae import seeds
from jaxae.run import scripts
from jaxae.run import workdir as workdir_lib
from jaxae.run.errors import RunError
from jaxae.run.workdir import METRICS_FILE, PARAMS_FILE
from jaxae.weights import save_params

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir (holds checkpoints/).")
flags.DEFINE_string("output", None, f"The params file to write (default: <workdir>/{PARAMS_FILE}).")


def planned_epochs(workdir: pathlib.Path) -> int | None:
  """The epochs the run was started for (its metrics.json's config), if it finished.

  settings.json leaves them out (a run may be continued for more), but a schedule depends on them.
  """
  try:
    epochs = json.loads((workdir / METRICS_FILE).read_text())["config"]["epochs"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return epochs if isinstance(epochs, int) and epochs > 0 else None


def main(argv):
  scripts.start(argv)
  if not FLAGS.workdir:
    scripts.fail("--workdir is required.")
  workdir = pathlib.Path(FLAGS.workdir)
  output = pathlib.Path(FLAGS.output or workdir / PARAMS_FILE)
  config = scripts.run_config(workdir)
  scripts.check_writable(str(output.parent))
  try:
    with workdir_lib.hold(workdir, purpose="export"):
      restored = scripts.restore_newest(workdir, config)
      save_params(output, seeds.saved_params(restored.state.params, config.num_seeds),
                  config.replace(epochs=planned_epochs(workdir) or restored.epoch))
  except RunError as e:
    scripts.fail(str(e), e.exit_code)
  except OSError as e:
    scripts.fail(f"could not write {output} ({e.strerror or e}).")
  print(f"Wrote the parameters of epoch {restored.epoch} to {output}.")


if __name__ == "__main__":
  scripts.run(main)
