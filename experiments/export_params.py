"""Writes the parameters of a training run's newest checkpoint into a params file.

    python experiments/export_params.py --workdir=runs/original --output=corrected.msgpack

The file (jaxae/weights.py) holds the parameters and the run's config (its epochs: those of the
finished run's metrics.json when the checkpoint is its last, else the checkpoint's); read it back with
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


def finished_epochs(workdir: pathlib.Path) -> int | None:
  """The epochs of the finished run whose metrics.json is in `workdir`, if there is one.

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
  scripts.check_output_file("output", str(output))
  if output.exists() and not workdir_lib.is_params_file(output):
    scripts.fail(f"{output} exists and is not a params file jaxae wrote; move it away or pass "
                 "another --output.")
  try:
    with workdir_lib.hold(workdir, purpose="export"):
      restored = scripts.restore_newest(workdir, config)
      finished = finished_epochs(workdir)
      if finished is not None and finished != restored.epoch:
        if not FLAGS.output:
          raise RunError(
              f"{output} belongs to the run that finished after epoch {finished} (its "
              f"metrics.json), and the newest checkpoint is of epoch {restored.epoch}: pass "
              "--output=<file> to write that epoch's parameters elsewhere.")
        finished = None  # metrics.json is another run's: the checkpoint's epochs are these.
      save_params(output, seeds.saved_params(restored.state.params, config.num_seeds),
                  config.replace(epochs=finished or restored.epoch))
  except OSError as e:
    scripts.fail(f"could not write {output} ({e.strerror or e}).")
  scripts.say(f"Wrote the parameters of epoch {restored.epoch} to {output}.")


if __name__ == "__main__":
  scripts.run(main)
