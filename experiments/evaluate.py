r"""Evaluates a training run's newest checkpoint, or a params file, on the test split.

    python experiments/evaluate.py --data_dir=../shared/tensorflow_datasets --workdir=runs/original
    python experiments/evaluate.py --data_dir=../shared/tensorflow_datasets \
        --params=results/rerun_gemm/corrected/params.msgpack --workdir=runs/corrected_eval

Writes eval.json (test loss, image count, versions and the task's metrics: for reconstruct SSIM
and PSNR in both conventions, for separate per source beside the trivial estimate; mean and std)
and a figure into --workdir: comparison.png (MNIST source, CIFAR-10 source, mean image,
reconstruction) or, for separate, separation.png (mean image, true and estimated digit, true and
estimated photo). A run of several seeds (num_seeds) evaluates every replica: eval.json holds
each one's metrics under "replicas" and their spread under "final"; the figure shows the first.

With --params (a file of jaxae/weights.py: a finished run's params.msgpack, or one of
results/*/params.msgpack), no training run is needed: --workdir only receives the results.
"""

import pathlib
import time

from absl import flags
import jax

from jaxae import extras, platforms, seeds
from jaxae.report import figures, summaries
from jaxae.run import scripts
from jaxae.run import workdir as workdir_lib
from jaxae.run.provenance import provenance
from jaxae.run.train_and_evaluate import replica_final_metrics
from jaxae.run.workdir import write_json
from jaxae.weights import ParamsFileError, load_params

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "tfds data directory holding mnist and cifar10.")
flags.DEFINE_string("workdir", None, "A training run's workdir (holds checkpoints/); with "
                    "--params, where the results go.")
flags.DEFINE_string("params", None, "Evaluate this params file (jaxae.save_params, a run's "
                    "params.msgpack) instead of the workdir's newest checkpoint.")
flags.DEFINE_integer("test_limit", 0, "Evaluate the first N test pairs (0 = all).")
flags.DEFINE_integer("eval_batch_size", 0, "Batch size of evaluation (0: the model's, which "
                     "keeps its activations in cache on CPU).")


def main(argv):
  scripts.start(argv)
  scripts.use_compilation_cache()
  extras.require("data", "run")
  if not FLAGS.workdir:
    scripts.fail("--workdir is required.")
  if FLAGS.test_limit < 0 or FLAGS.eval_batch_size < 0:
    scripts.fail("--test_limit and --eval_batch_size must be 0 or positive.")
  workdir = pathlib.Path(FLAGS.workdir)
  if FLAGS.params:
    try:
      params, config = load_params(FLAGS.params)
    except ParamsFileError as e:
      scripts.fail(str(e))
  else:
    # The run's settings (written when it started) say which model and normalization it used.
    config = scripts.run_config(workdir)
  scripts.check_writable(str(workdir))  # Before the evaluation, not after it.
  scripts.check_data_dir(FLAGS.data_dir)

  with workdir_lib.hold(workdir, purpose="evaluation"):
    if FLAGS.params:
      # A template's values replaced by the file's: any steps_per_epoch will do.
      state = seeds.create_train_states(config, steps_per_epoch=1).replace(
          params=seeds.stacked_params(params, config.num_seeds))
      evaluate(workdir, state, config, epoch=None)
    else:
      restored = scripts.restore_newest(workdir, config)
      evaluate(workdir, restored.state, config, epoch=restored.epoch)


def evaluate(workdir: pathlib.Path, state, config, epoch: int | None) -> None:
  """Writes eval.json and the figure of `state` (a checkpoint's of `epoch`, or --params's)."""
  figure = figures.EVAL_FIGURES[state.task.name]
  workdir_lib.refuse_foreign_files(workdir, ("eval.json", figure))
  test = scripts.load_data(FLAGS.data_dir, config, 0, FLAGS.test_limit, splits=("test",),
                           log=scripts.say)["test"]
  start = time.perf_counter()
  replicas = config.num_seeds
  finals, predictions = replica_final_metrics(
      state, test, FLAGS.eval_batch_size
      or platforms.choices(config, jax.default_backend()).eval_batch_size, replicas)
  seconds = time.perf_counter() - start
  task = state.task
  if replicas > 1:
    result = {"seeds": seeds.seeds_of(config), "final": seeds.spread_of(finals),
              "replicas": [{"seed": s, **f} for s, f in zip(seeds.seeds_of(config), finals)]}
  else:
    result = dict(finals[0])
  result.update(epoch=epoch, seconds=seconds, device=jax.devices()[0].device_kind,
                provenance=provenance())
  if FLAGS.params:
    result["params"] = str(FLAGS.params)
  try:
    write_json(workdir / "eval.json", result)
    figures.draw(task, test, predictions, workdir / figure, detailed=True,
                 title=(f"Test pairs after epoch {epoch}" if epoch is not None
                        else f"Test pairs, {pathlib.Path(FLAGS.params).name}")
                 + (f", seed {config.seed} (the first of {replicas})" if replicas > 1 else ""))
  except OSError as e:
    scripts.fail(f"could not write into {workdir} ({e.strerror or e}).")
  source = f"the checkpoint of epoch {epoch}" if epoch is not None else FLAGS.params
  scripts.say(f"Evaluated {source} in {seconds:.2f} s.")
  scripts.say(summaries.seeds_summary(finals, seeds.seeds_of(config), task.name))


if __name__ == "__main__":
  scripts.run(main)
