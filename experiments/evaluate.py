"""Evaluates the newest checkpoint of a training run on the test split.

    python experiments/evaluate.py --data_dir=../shared/tensorflow_datasets --workdir=runs/original

Writes eval.json (test loss, image count, versions and the task's metrics: for reconstruct SSIM
and PSNR in both conventions, for separate per source beside the trivial estimate; mean and std)
and a figure into --workdir: comparison.png (MNIST source, CIFAR-10 source, mean image,
reconstruction) or, for separate, separation.png (mean image, true and estimated digit, true and
estimated photo). A run of several seeds (--num_seeds) evaluates every replica: eval.json holds
each one's metrics under "replicas" and their spread under "final"; the figure shows the first.
"""

import json
import pathlib
import sys
import time

from absl import flags
import jax

from jaxae import cli, platforms, seeds
from jaxae import workdir as workdir_lib
from jaxae.checkpoints import Checkpointer, IncompatibleCheckpointError, NoUsableCheckpointError
from jaxae.config import Config
from jaxae.experiment import replica_final_metrics, seeds_summary
from jaxae.provenance import provenance
from jaxae.workdir import CHECKPOINT_DIR, SETTINGS_FILE, RunError, write_json

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "tfds data directory holding mnist and cifar10.")
flags.DEFINE_string("workdir", None, "A training run's workdir (holds checkpoints/).")
flags.DEFINE_integer("test_limit", 0, "Evaluate the first N test pairs (0 = all).")
flags.DEFINE_integer("eval_batch_size", 0, "Batch size of evaluation (0: the model's, which "
                     "keeps its activations in cache on CPU).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  if not FLAGS.workdir:
    cli.fail("--workdir is required.")
  if FLAGS.test_limit < 0 or FLAGS.eval_batch_size < 0:
    cli.fail("--test_limit and --eval_batch_size must be 0 or positive.")
  workdir = pathlib.Path(FLAGS.workdir)
  checkpoints = workdir / CHECKPOINT_DIR
  if not workdir_lib.jaxae_checkpoints(workdir):
    cli.fail(f"{workdir} holds no checkpoint; train first with experiments/train.py "
             f"--workdir={workdir}.")
  # The run's settings (written when it started) say which model and normalization it used.
  try:
    config = Config.from_dict(json.loads((workdir / SETTINGS_FILE).read_text()))
  except (OSError, ValueError, TypeError) as e:
    cli.fail(f"{workdir / SETTINGS_FILE} cannot be used ({type(e).__name__}: "
             f"{str(e).splitlines()[0] if str(e) else ''}); it is written when "
             "experiments/train.py starts a run in this workdir.")
  cli.check_writable(str(workdir))  # Before the evaluation, not after it.
  cli.check_data_dir(FLAGS.data_dir)

  try:
    with workdir_lib.hold(workdir, purpose="evaluation"):
      evaluate(workdir, checkpoints, config)
  except RunError as e:
    cli.fail(str(e), e.exit_code)


def evaluate(workdir: pathlib.Path, checkpoints: pathlib.Path, config: Config) -> None:
  checkpointer = Checkpointer(checkpoints)
  try:
    # A template for the restore: its values are replaced, so any steps_per_epoch will do.
    template = seeds.initial_state(config, steps_per_epoch=1)
    restored = checkpointer.restore_latest(template)
  except (NoUsableCheckpointError, IncompatibleCheckpointError) as e:
    cli.fail(str(e))
  finally:
    checkpointer.close()
  for note in restored.damaged:
    print(f"warning: {note}", file=sys.stderr, flush=True)

  _, test = cli.load_data(FLAGS.data_dir, config, 0, FLAGS.test_limit)
  start = time.perf_counter()
  replicas = seeds.replicas_of(config)
  finals, predictions = replica_final_metrics(
      restored.state, test, FLAGS.eval_batch_size
      or platforms.choices(config, jax.default_backend()).eval_batch_size, replicas)
  seconds = time.perf_counter() - start
  task = restored.state.task
  if replicas:
    result = {"seeds": seeds.seeds_of(config), "final": seeds.spread_of(finals),
              "replicas": [{"seed": s, **f} for s, f in zip(seeds.seeds_of(config), finals)]}
  else:
    result = dict(finals[0])
  result.update(epoch=restored.epoch, seconds=seconds, device=jax.devices()[0].device_kind,
                provenance=provenance())
  try:
    write_json(workdir / "eval.json", result)
    task.draw(test, predictions, workdir / task.eval_figure, detailed=True,
              title=f"Test pairs after epoch {restored.epoch}"
              + (f", seed {config.seed} (the first of {replicas})" if replicas else ""))
  except OSError as e:
    cli.fail(f"could not write into {workdir} ({e.strerror or e}).")
  print(f"Checkpoint of epoch {restored.epoch}; evaluated in {seconds:.2f} s.")
  print(seeds_summary(finals, seeds.seeds_of(config), task))


if __name__ == "__main__":
  cli.run(main)
