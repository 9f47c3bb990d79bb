"""Prints speed figures as JSON lines (and optionally writes them to --output).

    python experiments/benchmark.py --num_images=10000 --data_dir=../shared/tensorflow_datasets

Figures: train_images_per_s at each --batch_sizes (median over --epochs timed epochs after one
warm-up epoch, on --num_images random 32x32x3 images, the same workload as
../shared/bench/torch_reference.py), compile_s of the training step, eval_images_per_s,
metrics_s (SSIM+PSNR, both conventions, over 10,000 images) and, with --data_dir,
load_preprocess_s (both splits of both datasets; cold = without the decoded-array cache).
"""

import json
import pathlib
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxae import cli, parallel
from jaxae.config import Config
from jaxae.conv import CONV_IMPLS, SCRIPT_CONV_IMPL
from jaxae.loop import (EVAL_BATCH_SIZE, epoch_batches, epoch_key, evaluate, microbatch_size,
                        sharded_train_epoch, train_epoch)
from jaxae.metrics import image_quality
from jaxae.train import create_train_state

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["32", "256"], "Training batch sizes to measure.")
flags.DEFINE_integer("batch_size", None, "Measure this one batch size (overrides --batch_sizes).")
flags.DEFINE_integer("num_images", 10_000, "Random training images per epoch.")
flags.DEFINE_integer("epochs", 3, "Timed epochs per batch size (after one warm-up epoch).")
flags.DEFINE_enum("conv_impl", SCRIPT_CONV_IMPL, sorted(CONV_IMPLS),
                  "Conv formulation to time (jaxae/conv.py).")
flags.DEFINE_string("data_dir", None, "If set, also time loading + preprocessing the real data.")
flags.DEFINE_string("output", None, "Also write the JSON lines to this file.")


def emit(lines, **record):
  record["device"] = jax.devices()[0].device_kind
  record["num_devices"] = jax.device_count()
  line = json.dumps(record)
  print(line, flush=True)
  lines.append(line)


def time_training(images, batch_size, epochs, config, lines):
  mesh = parallel.data_mesh()
  state = parallel.replicate(create_train_state(jax.random.key(0), config), mesh)
  images = parallel.replicate(images, mesh)
  # Compile time: lower + compile the epoch program alone, before anything is cached.
  width = parallel.padded_batch_size(batch_size, mesh)
  idx, mask = epoch_batches(epoch_key(0, 0), images.shape[0], batch_size, width)
  idx, mask = parallel.put((idx, mask), parallel.batch_sharded(mesh, batch_dim=1))
  start = time.perf_counter()
  sharded_train_epoch(mesh, microbatch_size(width, mesh)).lower(state, images, idx, mask).compile()
  emit(lines, metric="compile_s", value=round(time.perf_counter() - start, 3),
       batch_size=batch_size)
  state = train_epoch(state, images, seed=0, epoch=0, batch_size=batch_size).state  # Warm-up.
  seconds = []
  for epoch in range(1, epochs + 1):
    start = time.perf_counter()
    result = train_epoch(state, images, seed=0, epoch=epoch, batch_size=batch_size)
    jax.block_until_ready(result.state.params)
    seconds.append(time.perf_counter() - start)
    state = result.state
  per_epoch = float(np.median(seconds))
  emit(lines, metric="train_images_per_s", value=round(images.shape[0] / per_epoch, 1),
       batch_size=batch_size, seconds_per_epoch=round(per_epoch, 4),
       num_images=int(images.shape[0]), conv_impl=config.conv_impl)
  return state


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  try:
    sizes = [FLAGS.batch_size] if FLAGS.batch_size else [int(b) for b in FLAGS.batch_sizes]
  except ValueError:
    cli.fail(f"--batch_sizes must be a comma-separated list of integers, got "
             f"{','.join(FLAGS.batch_sizes)!r}.")
  if FLAGS.output:  # Checked now, not after minutes of measuring.
    if problem := cli.unwritable(pathlib.Path(FLAGS.output).absolute().parent):
      cli.fail(f"--output={FLAGS.output} cannot be written ({problem}).")
  if any(b <= 0 for b in sizes) or FLAGS.num_images <= 0 or FLAGS.epochs <= 0:
    cli.fail("--batch_size(s), --num_images and --epochs must be positive.")
  if max(sizes) > FLAGS.num_images:
    cli.fail(f"a batch size ({max(sizes)}) is larger than --num_images ({FLAGS.num_images}).")
  if FLAGS.data_dir:
    cli.check_data_dir(FLAGS.data_dir)
  lines = []
  config = Config(conv_impl=FLAGS.conv_impl)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (FLAGS.num_images, 32, 32, 3)), jnp.float32)
  state = None
  for batch_size in sizes:
    state = time_training(images, batch_size, FLAGS.epochs, config, lines)

  test = images[:min(FLAGS.num_images, 10_000)]
  evaluate(state, test)  # Compile (the timed call below is the same call).
  start = time.perf_counter()
  out = evaluate(state, test)
  jax.block_until_ready(out["reconstructions"])
  emit(lines, metric="eval_images_per_s", value=round(test.shape[0] / (time.perf_counter() - start), 1),
       batch_size=EVAL_BATCH_SIZE)
  image_quality(test, out["reconstructions"])  # Compile.
  start = time.perf_counter()
  image_quality(test, out["reconstructions"])
  emit(lines, metric="metrics_s", value=round(time.perf_counter() - start, 3),
       num_images=int(test.shape[0]))

  if FLAGS.data_dir:
    from jaxae.dataset import load_mixed  # pylint: disable=g-import-not-at-top
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
  cli.run(main)
