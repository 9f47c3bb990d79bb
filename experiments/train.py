r"""Trains a model on MNIST + CIFAR-10 mean images and writes results into --workdir.

    python experiments/train.py --data_dir=../shared/tensorflow_datasets --workdir=runs/corrected
    python experiments/train.py --config=experiments/configs/separate_unet_cosine.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate --config.epochs=8

--config names an experiment (experiments/configs/*.py, one per run of RESULTS.md; default
corrected.py, the original experiment with its training corrected) and --config.<field>=<value>
overrides any field of jaxae.Config. With --config.num_seeds=N, trains N replicas (seeds seed ..
seed + N - 1) as one program and records each one and their spread.

Writes metrics.json, params.msgpack, loss_curve.png, reconstructions.png (separate:
separation.png), checkpoints/ (one per epoch) and TensorBoard event files (tensorboard/, as
training goes: `tensorboard --logdir=<workdir>/tensorboard`).
Running the same command again resumes from the newest good checkpoint.

Training is data-parallel over every device. For several processes (hosts), start one per host
with the same --coordinator_address and --num_processes and its own --process_id
(docs/devices.md).
"""

import pathlib
import sys

from absl import flags

from jaxae import extras, parallel
from jaxae.config import Config
from jaxae.run import choices, scripts
from jaxae.run import workdir as workdir_lib
from jaxae.run.train_and_evaluate import train_and_evaluate
from jaxae.run.workdir import run_settings

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "tfds data directory holding mnist and cifar10 "
                    "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and figures go.")
CONFIG = scripts.define_config_flag(pathlib.Path(__file__).parent / "configs" / "corrected.py")
flags.DEFINE_integer("train_limit", 0, "Use the first N training pairs (0 = all).")
flags.DEFINE_integer("test_limit", 0, "Use the first N test pairs (0 = all).")
flags.DEFINE_bool("overwrite", False, "Replace a run with different settings (or unreadable "
                  "checkpoints) in --workdir instead of refusing.")
flags.DEFINE_integer("eval_batch_size", 0, "Batch size of evaluation (0: measured, as "
                     "--measure_choices says).")
flags.DEFINE_bool("measure_choices", choices.measure_by_default(), "Time the speed-only "
                  "choices (formulation, microbatch, evaluation batch) on this machine once and "
                  "cache them (jaxae/run/choices.py); --nomeasure_choices: the platform's "
                  "defaults (jaxae/platforms.py). A resumed run reuses its recorded ones.")
flags.DEFINE_integer("keep_checkpoints", 3, "How many of the newest checkpoints to keep.")
flags.DEFINE_integer("log_every_steps", 100, "TensorBoard: log the training loss (mean of the "
                     "window) every N optimizer steps, into <workdir>/tensorboard; 0 writes no "
                     "TensorBoard files.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a multi-process "
                    "run (jax.distributed); every process passes the same one.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. --num_processes - 1.")


def validate_flags() -> Config:
  if not FLAGS.workdir:
    scripts.fail("--workdir is required.")
  if FLAGS.log_every_steps < 0:
    scripts.fail(f"--log_every_steps must be 0 (no TensorBoard files) or positive, got "
                 f"{FLAGS.log_every_steps}.")
  if FLAGS.eval_batch_size < 0 or FLAGS.keep_checkpoints <= 0:
    scripts.fail("--eval_batch_size must be 0 (the model's) or positive, and --keep_checkpoints "
                 "positive.")
  distributed = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in distributed):
    if any(v is None for v in distributed):
      scripts.fail("a multi-process run needs all of --coordinator_address, --num_processes and "
                   "--process_id.")
    if ":" not in FLAGS.coordinator_address:
      scripts.fail(f"--coordinator_address must be host:port, got {FLAGS.coordinator_address!r}.")
    if FLAGS.num_processes < 1 or not 0 <= FLAGS.process_id < FLAGS.num_processes:
      scripts.fail(f"--process_id must be in 0..{FLAGS.num_processes - 1} and --num_processes "
                   f"positive, got --process_id={FLAGS.process_id} "
                   f"--num_processes={FLAGS.num_processes}.")
  config = scripts.config_from_flag(CONFIG)
  scripts.check_writable(FLAGS.workdir)
  scripts.check_data_dir(FLAGS.data_dir)
  return config


def main(argv):
  scripts.start(argv)
  scripts.use_compilation_cache()
  extras.require("data", "run")
  config = validate_flags()
  if FLAGS.coordinator_address:
    try:
      parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except Exception as e:  # pylint: disable=broad-except
      scripts.fail(f"could not join the run at {FLAGS.coordinator_address} as process "
                   f"{FLAGS.process_id} of {FLAGS.num_processes}: {str(e).splitlines()[0]}")
  log = scripts.say if parallel.is_primary() else (lambda _: None)
  # Refuse a held or mismatched workdir before spending time on the data. The hold is let go
  # while the data loads (a new workdir is removed again), so a Ctrl-C then leaves nothing;
  # train_and_evaluate holds it for the run and checks the settings again.
  with workdir_lib.hold(FLAGS.workdir):
    workdir_lib.holds_other_run(pathlib.Path(FLAGS.workdir),
                                run_settings(config, FLAGS.train_limit, FLAGS.test_limit),
                                FLAGS.overwrite)
  data = scripts.load_data(FLAGS.data_dir, config, FLAGS.train_limit, FLAGS.test_limit, log=log)
  train, test = data["train"], data["test"]
  train_and_evaluate(config, train, test, FLAGS.workdir, train_limit=FLAGS.train_limit,
                     test_limit=FLAGS.test_limit, overwrite=FLAGS.overwrite,
                     keep_checkpoints=FLAGS.keep_checkpoints,
                     eval_batch_size=FLAGS.eval_batch_size or None,
                     measure_choices=FLAGS.measure_choices, log=log,
                     warn=lambda line: print(f"warning: {line}", file=sys.stderr, flush=True),
                     tensorboard_every=FLAGS.log_every_steps or None,
                     progress=sys.stdout)


if __name__ == "__main__":
  scripts.run(main, interrupted="interrupted; the checkpoints of the completed epochs are kept: "
              "run the same command again to resume.")
