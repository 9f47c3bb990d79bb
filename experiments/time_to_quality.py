r"""Time to quality: training seconds until the test PSNR first reaches a target, per seed.

    python experiments/time_to_quality.py --config=experiments/configs/fast.py \
        --data_dir=../shared/tensorflow_datasets --num_seeds=5 --output=ttq_fast.jsonl

For each seed (config.seed, config.seed + 1, ...) it trains the config's recipe on the real data,
one epoch program at a time, and after every epoch scores the standard PSNR (mean over the test
pairs) outside the timed part. It prints one JSON line per epoch (the curve: `train_s`, the
training seconds so far, and `psnr`), one per seed (`seconds_to_target`: the training seconds at
the first epoch whose PSNR reached --target, or null) and a summary over the seeds.

Training seconds are the sum of the epoch programs' times; the epoch program is compiled before
the first epoch and its compilation reported beside them (`compile_s`), as is loading the data
(`load_s`). Nothing else runs in the timed part: no checkpoint, no per-epoch test loss. Compare
figures only within one sitting on one machine (each line names the CPU).
"""

import functools
import json
import pathlib
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxae import parallel
from jaxae.dataset import load_mixed
from jaxae.loop import evaluate, steps_per_epoch, train_epoch
from jaxae.metrics import psnr
from jaxae.report import figures
from jaxae.run import choices, scripts
from jaxae.run.provenance import host
from jaxae.steps import create_train_state

FLAGS = flags.FLAGS
CONFIG = scripts.define_config_flag(pathlib.Path(__file__).parent / "configs" / "fast.py")
flags.DEFINE_string("data_dir", None, "tfds data directory holding mnist and cifar10.")
flags.DEFINE_integer("num_seeds", 1, "Seeds to measure: config.seed, config.seed + 1, ...")
flags.DEFINE_float("target", 40.5, "The standard PSNR (dB, mean over the test pairs) to reach.")
flags.DEFINE_string("output", None, "Also write the JSON lines to this file.")
flags.DEFINE_bool("measure_choices", choices.measure_by_default(), "Measure the speed-only "
                  "choices on this machine (or read them from the cache), as train.py does; "
                  "--nomeasure_choices: the platform's defaults (jaxae/platforms.py).")
flags.DEFINE_string("plot", None, "Also draw PSNR against training seconds into this PNG.")
flags.DEFINE_list("plot_with", [], "Other recipes' --output files (label=path) to draw beside.")
flags.DEFINE_string("config_label", None, "This recipe's label in --plot (default: 'this recipe').")


def emit(lines, **record):
  record["cpu"] = host()["cpu"]
  line = json.dumps(record)
  scripts.say(line)
  lines.append(line)


def measure_seed(config, train, test, lines) -> dict:
  """One seed's curve: (training seconds, PSNR) after each epoch."""
  mesh = parallel.data_mesh()
  choice, source = choices.run_choices(config.replace(num_seeds=1), mesh,
                                       measure=FLAGS.measure_choices)
  emit(lines, metric="platform_choices", value=choice.describe(), source=source, seed=config.seed)
  config = config.replace(conv_impl=choice.conv_impl)
  steps = steps_per_epoch(len(train), config.batch_size)
  state = parallel.replicate(create_train_state(jax.random.key(config.seed), config,
                                                steps_per_epoch=steps), mesh)
  examples = parallel.replicate(train.images, mesh)
  run = dict(batch_size=config.batch_size, mesh=mesh,
             microbatch_per_device=choice.microbatch_per_device)
  start = time.perf_counter()
  jax.jit(functools.partial(train_epoch, **run)).lower(state, examples, 1, seed=0).compile()
  compile_s = time.perf_counter() - start
  train_s, curve, reached = 0.0, [], None
  for epoch in range(1, config.epochs + 1):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(train_epoch(state, examples, epoch, seed=config.seed, **run))
    epoch_s = time.perf_counter() - start
    train_s += epoch_s
    predictions = evaluate(state, test.images, batch_size=choice.eval_batch_size, mesh=mesh)
    value = float(jnp.mean(psnr(test.images, predictions["reconstructions"], "standard")))
    curve.append((round(train_s, 2), round(value, 3)))
    if reached is None and value >= FLAGS.target:
      reached = train_s
    emit(lines, metric="curve", seed=config.seed, epoch=epoch, epoch_s=round(epoch_s, 2),
         train_s=round(train_s, 2), psnr=round(value, 3))
  record = dict(metric="seed", seed=config.seed, compile_s=round(compile_s, 2),
                train_s=round(train_s, 2), final_psnr=curve[-1][1], target=FLAGS.target,
                seconds_to_target=None if reached is None else round(reached, 2))
  emit(lines, **record)
  return record


def main(argv):
  scripts.start(argv)
  if FLAGS.num_seeds < 1:
    scripts.fail("--num_seeds must be positive.")
  scripts.check_output_file("output", FLAGS.output)
  scripts.check_output_file("plot", FLAGS.plot)
  others = {}
  for item in FLAGS.plot_with:
    label, _, path = item.rpartition("=")
    if not label or not pathlib.Path(path).is_file():
      scripts.fail(f"--plot_with takes label=path of an earlier --output file, got {item!r}.")
    try:
      [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
      scripts.fail(f"--plot_with={item}: {path} is not an --output file of this script "
                   f"(JSON lines): {type(e).__name__}.")
    others[label] = pathlib.Path(path)
  scripts.check_data_dir(FLAGS.data_dir)
  config = scripts.config_from_flag(CONFIG)
  if config.task != "reconstruct" or config.full_batch or config.num_seeds != 1:
    scripts.fail("time_to_quality.py measures one-seed minibatch reconstruction configs "
                 "(task=reconstruct, full_batch=false, num_seeds=1); give --num_seeds here.")
  lines = []
  start = time.perf_counter()
  splits = load_mixed(FLAGS.data_dir)
  jax.block_until_ready(splits["test"].images)
  emit(lines, metric="load_s", value=round(time.perf_counter() - start, 2))
  records = [measure_seed(config.replace(seed=config.seed + k), splits["train"], splits["test"],
                          lines) for k in range(FLAGS.num_seeds)]
  final = np.asarray([r["final_psnr"] for r in records])
  times = np.asarray([r["train_s"] for r in records])
  reached = [r["seconds_to_target"] for r in records if r["seconds_to_target"] is not None]
  emit(lines, metric="summary", num_seeds=len(records), target=FLAGS.target,
       final_psnr_mean=round(float(final.mean()), 3),
       final_psnr_std=round(float(final.std(ddof=1)) if len(final) > 1 else 0.0, 3),
       train_s_mean=round(float(times.mean()), 2), train_s_max=round(float(times.max()), 2),
       seeds_reaching_target=len(reached),
       seconds_to_target_max=round(max(reached), 2) if reached else None)
  if FLAGS.output:
    pathlib.Path(FLAGS.output).write_text("\n".join(lines) + "\n")
  if FLAGS.plot:
    curves = {label: _curves(path.read_text().splitlines()) for label, path in others.items()}
    curves[FLAGS.config_label or "this recipe"] = _curves(lines)
    figures.quality_curves(curves, FLAGS.plot, FLAGS.target)


def _curves(jsonl_lines) -> list[list[tuple[float, float]]]:
  """Each seed's (training seconds, PSNR) points from time_to_quality.py's lines."""
  by_seed: dict[int, list[tuple[float, float]]] = {}
  for record in map(json.loads, filter(None, jsonl_lines)):
    if record.get("metric") == "curve":
      by_seed.setdefault(record["seed"], []).append((record["train_s"], record["psnr"]))
  return list(by_seed.values())


if __name__ == "__main__":
  scripts.run(main)
