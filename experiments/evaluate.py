"""Evaluates the newest checkpoint of a training run on the test split.

    python experiments/evaluate.py --data_dir=../shared/tensorflow_datasets --workdir=runs/original

Writes eval.json (SSIM and PSNR in both conventions, mean and std; test loss; image count) and
comparison.png (MNIST source, CIFAR-10 source, mean image, reconstruction) into --workdir.
"""

import json
import pathlib
import time

from absl import app, flags
import jax

from jaxae import cli, plots
from jaxae.checkpoints import Checkpointer, NoUsableCheckpointError
from jaxae.config import Config
from jaxae.experiment import final_metrics, summary
from jaxae.workdir import CHECKPOINT_DIR, SETTINGS_FILE, write_json
from jaxae.loop import EVAL_BATCH_SIZE
from jaxae.train import create_train_state

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "tfds data directory holding mnist and cifar10.")
flags.DEFINE_string("workdir", None, "A training run's workdir (holds checkpoints/).")
flags.DEFINE_integer("test_limit", 0, "Evaluate the first N test pairs (0 = all).")
flags.DEFINE_integer("eval_batch_size", EVAL_BATCH_SIZE, "Batch size of evaluation.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  if not FLAGS.workdir:
    cli.fail("--workdir is required.")
  if FLAGS.test_limit < 0 or FLAGS.eval_batch_size <= 0:
    cli.fail("--test_limit must be >= 0 and --eval_batch_size positive.")
  workdir = pathlib.Path(FLAGS.workdir)
  checkpoints = workdir / CHECKPOINT_DIR
  if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
    cli.fail(f"{workdir} holds no checkpoint; train first with experiments/train.py "
             f"--workdir={workdir}.")
  # The run's settings (written when it started) say which model and normalization it used.
  try:
    config = Config.from_dict(json.loads((workdir / SETTINGS_FILE).read_text()))
  except (OSError, ValueError, TypeError) as e:
    cli.fail(f"{workdir / SETTINGS_FILE} cannot be read ({type(e).__name__}); it is written when "
             "experiments/train.py starts a run in this workdir.")
  cli.check_data_dir(FLAGS.data_dir)

  checkpointer = Checkpointer(checkpoints)
  try:
    restored = checkpointer.restore_latest(create_train_state(jax.random.key(config.seed), config))
  except NoUsableCheckpointError as e:
    cli.fail(str(e))
  finally:
    checkpointer.close()
  epoch, state, _ = restored

  _, test = cli.load_data(FLAGS.data_dir, config, 0, FLAGS.test_limit)
  start = time.perf_counter()
  final = final_metrics(state, test, FLAGS.eval_batch_size, config)
  seconds = time.perf_counter() - start
  recons = final.pop("_reconstructions")
  final.update(epoch=epoch, seconds=seconds, device=jax.devices()[0].device_kind)
  write_json(workdir / "eval.json", final)
  plots.comparison(test.mnist_images, test.cifar_images, test.images, recons,
                   workdir / "comparison.png", count=min(8, len(test)),
                   title=f"Test pairs after epoch {epoch}",
                   mnist_normalization=config.mnist_normalization,
                   cifar_normalization=config.cifar_normalization)
  print(f"Checkpoint of epoch {epoch}; evaluated in {seconds:.2f} s.")
  print(summary(final))


if __name__ == "__main__":
  app.run(main)
