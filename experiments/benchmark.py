"""Prints speed figures as JSON lines (and optionally writes them to --output).

    python experiments/benchmark.py --num_images=10000 --data_dir=../shared/tensorflow_datasets

Figures: platform_choices (the speed-only choices at each batch size, measured on this machine
or cached: jaxae/run/choices.py), gemm_peak_gflops (this machine's float32 and bfloat16 GEMM
rate, 2048x2048), train_images_per_s (with steps_per_s, gflops, fraction_of_f32_peak and
fraction_of_peak, of the config's gemm_dtype's peak) at each --batch_sizes (median over --epochs
timed epochs after one warm-up epoch, on --num_images mean images of random digits and photos: for
the default task and model the same workload as ../shared/bench/torch_reference.py; --config (a config
file, as for train.py) and --config.<field> time the others: its task, model, widths, conv_impl and
optimizer; its batch_size and epochs are this script's own flags), compile_s of the training step,
eval_images_per_s, metrics_s (the task's final metrics over up to 10,000 images) and, with
--data_dir, load_preprocess_s (both splits of both datasets; cold = without the decoded-array
cache).

With --config.num_seeds=N (> 1), each batch size is also timed with N replicas (jaxae/seeds.py),
run as --replica_strategy says (default: the measured choice):
replica_images_per_s (N x images per second) and seeds_time_ratio, the time of an N-seed epoch
over that of the single-seed epoch measured just before it.
"""

import dataclasses
import functools
import json
import pathlib
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxae import parallel, seeds, step_reports
from jaxae.dataset import load_mixed
from jaxae.loop import evaluate, steps_per_epoch, train_epoch
from jaxae.models import forward_flops
from jaxae.run import choices, scripts
from jaxae.run.provenance import host
from jaxae.steps import batch_size_of
from jaxae.tasks import task_from_config

FLAGS = flags.FLAGS
CONFIG = scripts.define_config_flag(pathlib.Path(__file__).parent / "configs" / "corrected.py")
flags.DEFINE_list("batch_sizes", ["32", "256"], "Training batch sizes to measure.")
flags.DEFINE_integer("batch_size", None, "Measure this one batch size (overrides --batch_sizes).")
flags.DEFINE_integer("num_images", 10_000, "Random training images per epoch.")
flags.DEFINE_integer("epochs", 3, "Timed epochs per batch size (after one warm-up epoch).")
flags.DEFINE_string("data_dir", None, "If set, also time loading + preprocessing the real data.")
flags.DEFINE_integer("eval_batch_size", 0, "Evaluation batch (0: measured, as --measure_choices "
                     "says); --config.microbatch fixes the training microbatch.")
flags.DEFINE_bool("measure_choices", choices.measure_by_default(), "Measure the speed-only "
                  "choices on this machine (or read them from the cache), as train.py does; "
                  "--nomeasure_choices: the platform's defaults (jaxae/platforms.py).")
flags.DEFINE_enum("replica_strategy", None, ["vmap", "loop"],
                  "With --config.num_seeds: 'vmap' (one batched program) or 'loop' (the "
                  "single-seed program per replica); default: the measured choice.")
flags.DEFINE_bool("progress", False, "Time epochs that report their steps to the host (as "
                  "train.py's progress line has them; jaxae/report/progress.py).")
flags.DEFINE_string("output", None, "Also write the JSON lines to this file.")
flags.DEFINE_integer("gemm_size", 2048, "The GEMM peak's square matrices' side (the peak is the "
                     "best of 10 products in float32 and in bfloat16).")


def emit(lines, **record):
  record["device"] = jax.devices()[0].device_kind
  record["num_devices"] = jax.device_count()
  record["cpu"] = host()["cpu"]  # Figures from different machines are not comparable.
  line = json.dumps(record)
  scripts.say(line)
  lines.append(line)


def compile_seconds(fn, *args, **kwargs) -> float:
  """Seconds to compile `fn(*args, **kwargs)` (jaxae.loop's one-seed functions) as one program."""
  start = time.perf_counter()
  jax.jit(functools.partial(fn, **kwargs)).lower(*args).compile()
  return time.perf_counter() - start


def gemm_peak_gflops(dtype, size: int = 2048, repeats: int = 10) -> float:
  """This machine's GEMM rate: the best of `repeats` [size, size] @ [size, size] in `dtype`, the
  products accumulated in float32 (GFLOP/s)."""
  a, b = (jax.random.normal(jax.random.key(k), (size, size), dtype) for k in (0, 1))
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best / 1e9


def time_training(examples, batch_size, epochs, config, choice, lines, peaks):
  """Times the epochs of config.num_seeds replicas (one seed: a stack of one, as a run holds it);
  returns the trained state and the median epoch's seconds."""
  mesh = parallel.data_mesh()
  replicas = config.num_seeds
  strategy = "loop" if replicas == 1 else FLAGS.replica_strategy or choice.replica_strategy
  state = parallel.replicate(seeds.create_train_states(
      config, steps_per_epoch=steps_per_epoch(batch_size_of(examples), batch_size)), mesh)
  examples = parallel.replicate(examples, mesh)
  n = batch_size_of(examples)
  micro = choice.microbatch_per_device
  # What train.py's progress line costs: the epoch program reporting its steps.
  scan = (step_reports.every(step_reports.interval(steps_per_epoch(n, batch_size))).scan
          if FLAGS.progress else jax.lax.scan)
  run = dict(batch_size=batch_size, microbatch_per_device=micro, mesh=mesh, scan=scan)
  if replicas == 1:  # The epoch program alone, before anything is cached.
    emit(lines, metric="compile_s", batch_size=batch_size,
         value=round(compile_seconds(train_epoch, seeds.replica(state, 0), examples, 0, seed=0,
                                     **run), 3))

  def epoch(state, number):
    return seeds.over_replicas(train_epoch, state, examples, number, seed=0, strategy=strategy,
                               **run)[0]
  state = jax.block_until_ready(epoch(state, 0))  # Warm-up.
  seconds = []
  for number in range(1, epochs + 1):
    start = time.perf_counter()
    state = jax.block_until_ready(epoch(state, number))
    seconds.append(time.perf_counter() - start)
  per_epoch = float(np.median(seconds))
  # A trained image costs about three forward passes (the backward pass two).
  train_gflops = 3 * forward_flops(seeds.replica(state, 0)) * replicas * n / per_epoch / 1e9
  peak = peaks[config.gemm_dtype]
  emit(lines, metric="replica_images_per_s" if replicas > 1 else "train_images_per_s",
       value=round(config.num_seeds * n / per_epoch, 1), batch_size=batch_size,
       gflops=round(train_gflops, 1),
       fraction_of_f32_peak=round(train_gflops / peaks["float32"], 3),
       fraction_of_peak=round(train_gflops / peak, 3), gemm_dtype=config.gemm_dtype,
       seconds_per_epoch=round(per_epoch, 4), num_images=n, num_seeds=config.num_seeds,
       # Small batches are bound by steps, not images (RESULTS.md, "Time to quality").
       steps_per_s=round(steps_per_epoch(n, batch_size) / per_epoch, 1),
       optimizer=config.optimizer, replica_strategy=strategy,
       conv_impl=config.conv_impl,
       task=config.task, model=config.model,
       features=list(config.features), microbatch=micro)
  return state, per_epoch


def main(argv):
  scripts.start(argv)
  try:
    sizes = ([FLAGS.batch_size] if FLAGS.batch_size is not None
             else [int(b) for b in FLAGS.batch_sizes])
  except ValueError:
    scripts.fail(f"--batch_sizes must be a comma-separated list of integers, got "
                 f"{','.join(FLAGS.batch_sizes)!r}.")
  if not sizes:
    scripts.fail("--batch_sizes is empty; name at least one batch size "
                 "(e.g. --batch_sizes=32,256).")
  scripts.check_output_file("output", FLAGS.output)
  if any(b <= 0 for b in sizes) or min(FLAGS.num_images, FLAGS.epochs, FLAGS.gemm_size) <= 0:
    scripts.fail("--batch_size(s), --num_images, --epochs and --gemm_size must be positive.")
  if FLAGS.eval_batch_size < 0:
    scripts.fail("--eval_batch_size must be 0 (measured) or positive.")
  if max(sizes) > FLAGS.num_images:
    scripts.fail(f"a batch size ({max(sizes)}) is larger than --num_images ({FLAGS.num_images}).")
  if FLAGS.data_dir:
    scripts.check_data_dir(FLAGS.data_dir)
  config = scripts.config_from_flag(CONFIG)
  lines = []
  split = choices.random_split(FLAGS.num_images)
  examples = task_from_config(config).examples(split)
  state = None
  peaks = {str(jnp.dtype(d)): gemm_peak_gflops(d, FLAGS.gemm_size)
           for d in (jnp.float32, jnp.bfloat16)}
  for dtype, peak in peaks.items():
    emit(lines, metric="gemm_peak_gflops", value=round(peak, 1), dtype=dtype, size=FLAGS.gemm_size)
  for batch_size in sizes:
    choice, source = choices.run_choices(config.replace(batch_size=batch_size),
                                         parallel.data_mesh(),
                                         eval_batch_size=FLAGS.eval_batch_size or None,
                                         measure=FLAGS.measure_choices)
    emit(lines, metric="platform_choices", value=choice.describe(), source=source,
         batch_size=batch_size, **dataclasses.asdict(choice))
    # Each batch size's choices from the config as given ("auto" stays auto for the next).
    timed = config.replace(conv_impl=choice.conv_impl)
    state, one_seed = time_training(examples, batch_size, FLAGS.epochs,
                                    timed.replace(num_seeds=1), choice, lines, peaks)
    if config.num_seeds > 1:
      _, many = time_training(examples, batch_size, FLAGS.epochs, timed, choice, lines, peaks)
      emit(lines, metric="seeds_time_ratio", value=round(many / one_seed, 3),
           batch_size=batch_size, num_seeds=config.num_seeds)

  test = split.take(min(FLAGS.num_images, 10_000))
  test_examples = state.task.examples(test)
  eval_batch = choice.eval_batch_size
  one = seeds.replica(state, 0)
  jax.block_until_ready(evaluate(one, test_examples, batch_size=eval_batch))  # Compile.
  start = time.perf_counter()
  out = jax.block_until_ready(evaluate(one, test_examples, batch_size=eval_batch))
  emit(lines, metric="eval_images_per_s", value=round(len(test) / (time.perf_counter() - start), 1),
       batch_size=eval_batch)
  predictions = {k: np.asarray(v) for k, v in out.items() if k != "per_example_loss"}
  state.task.final_metrics(test, predictions)  # Compile.
  start = time.perf_counter()
  state.task.final_metrics(test, predictions)
  emit(lines, metric="metrics_s", value=round(time.perf_counter() - start, 3), num_images=len(test))

  if FLAGS.data_dir:
    for cache in (False, True):
      start = time.perf_counter()
      splits = load_mixed(FLAGS.data_dir, cache=cache)
      jax.block_until_ready(splits["test"].images)
      emit(lines, metric="load_preprocess_s", value=round(time.perf_counter() - start, 3),
           cache=cache, num_images=len(splits["train"]) + len(splits["test"]))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  scripts.run(main)
