"""Prints RESULTS.md's table rows from training runs' metrics.json files.

    python experiments/results_table.py --workdirs=runs/faithful,runs/corrected

One Markdown row per workdir: epochs, optimizer steps, final train and test loss, SSIM and PSNR
(mean ± std over the test images) in both conventions, wall time (sum of the epochs' times) and
device, all read from the run's own metrics.json. Separation runs (task "separate") get a table of
their own: digit and photo PSNR/SSIM, each run followed by the trivial estimate's row. Runs of
several seeds (num_seeds) get a table per task: each final number's mean ± standard deviation
across the seeds, and [min, max].
"""

import json
import math
import pathlib

from absl import flags
import jax

from jaxae.config import Config
from jaxae.run import scripts
from jaxae.run.workdir import METRICS_FILE
from jaxae.steps import count_params, create_train_state

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Training runs' workdirs, one row each.")

HEADER = ("| run | epochs | optimizer steps | train loss | test loss | SSIM original | "
          "PSNR original (dB) | SSIM standard | PSNR standard (dB) | wall time | device |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
SEPARATE_HEADER = ("| run | model | parameters | epochs | digit PSNR (dB) | digit SSIM | "
                   "photo PSNR (dB) | photo SSIM | training time | device |\n"
                   "|---|---|---|---|---|---|---|---|---|---|")


# Per task, the columns of the several-seeds table: (heading, final metric, digits).
SEEDS_COLUMNS = {
    "reconstruct": [("train loss", "train_loss", 6), ("test loss", "test_loss", 6),
                    ("SSIM original", "ssim_original_mean", 4),
                    ("PSNR original (dB)", "psnr_original_mean", 2),
                    ("SSIM standard", "ssim_standard_mean", 4),
                    ("PSNR standard (dB)", "psnr_standard_mean", 2)],
    "separate": [("test loss", "test_loss", 6), ("digit PSNR (dB)", "digit_psnr_mean", 2),
                 ("digit SSIM", "digit_ssim_mean", 4), ("photo PSNR (dB)", "photo_psnr_mean", 2),
                 ("photo SSIM", "photo_ssim_mean", 4)],
}


def seeds_header(task: str) -> str:
  names = ["run", "seeds", "epochs"] + [c[0] for c in SEEDS_COLUMNS[task]] + ["wall time",
                                                                              "device"]
  return ("Mean ± standard deviation across seeds [min, max]:\n\n| " + " | ".join(names)
          + " |\n" + "|---" * len(names) + "|")


def seeds_row(name: str, metrics: dict) -> str:
  """A run of several seeds: each final number's spread across its replicas."""
  final, seeds = metrics["final"], metrics["seeds"]
  minutes, device = _time_and_device(metrics)

  def cell(key, digits):
    s = final[key]
    return (f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} "
            f"[{s['min']:.{digits}f}, {s['max']:.{digits}f}]")
  cells = ([name, f"{len(seeds)} ({seeds[0]}..{seeds[-1]})", str(len(metrics["history"]))]
           + [cell(key, d) for _, key, d in SEEDS_COLUMNS[_task(metrics)]] + [minutes, device])
  return "| " + " | ".join(cells) + " |"


def _task(metrics: dict) -> str:
  return metrics["config"].get("task", "reconstruct")


def _pm(values: dict, key: str, digits: int) -> str:
  return f"{values[key + '_mean']:.{digits}f} ± {values[key + '_std']:.{digits}f}"


def _time_and_device(metrics: dict) -> tuple[str, str]:
  minutes = sum(h["seconds"] for h in metrics["history"]) / 60
  device = metrics["platform"].upper() if metrics["platform"] == "cpu" else metrics["device"]
  return f"{minutes:.1f} min", str(device).replace("|", "\\|")  # A cell, whatever it says.


def row(name: str, metrics: dict) -> str:
  final = metrics["final"]
  minutes, device = _time_and_device(metrics)
  cells = [name, str(len(metrics["history"])), f"{metrics['optimizer_steps']:,}",
           f"{final['train_loss']:.4f}", f"{final['test_loss']:.4f}",
           _pm(final, "ssim_original", 4), _pm(final, "psnr_original", 2),
           _pm(final, "ssim_standard", 4), _pm(final, "psnr_standard", 2), minutes, device]
  return "| " + " | ".join(cells) + " |"


def _num_params(metrics: dict) -> int:
  """From metrics.json, or (runs from before it was recorded) from the run's config."""
  if "num_params" in metrics:
    return metrics["num_params"]
  state = create_train_state(jax.random.key(0), Config.from_dict(metrics["config"]),
                             steps_per_epoch=1)
  return count_params(state.params)


def separate_rows(name: str, metrics: dict) -> list[str]:
  """The run's estimate, then the trivial estimate (blank digit) on the same test pairs."""
  final, config = metrics["final"], metrics["config"]
  minutes, device = _time_and_device(metrics)

  def cells(label, values, model, params, epochs, time):
    return ("| " + " | ".join([label, model, params, epochs, _pm(values, "digit_psnr", 2),
                               _pm(values, "digit_ssim", 4), _pm(values, "photo_psnr", 2),
                               _pm(values, "photo_ssim", 4), time, device]) + " |")
  model = f"{config['model']} {','.join(map(str, config['features']))}"
  return [cells(name, final, model, f"{_num_params(metrics):,}", str(len(metrics["history"])),
                minutes),
          cells("trivial (blank digit)", final["trivial"], "—", "—", "—", "—")]


def _not_finite(value, key: str = "final") -> str | None:
  """'final/<key> = nan' for the first number in `value` that is not finite, else None."""
  if isinstance(value, dict):
    return next((bad for k, v in value.items() if (bad := _not_finite(v, f"{key}/{k}"))), None)
  if isinstance(value, float) and not math.isfinite(value):
    return f"{key} = {value}"
  return None


def main(argv):
  scripts.start(argv)
  if not FLAGS.workdirs:
    scripts.fail("--workdirs is required.")
  rows, separate, several = [], [], {task: [] for task in SEEDS_COLUMNS}
  for workdir in map(pathlib.Path, FLAGS.workdirs):
    try:
      metrics = json.loads((workdir / METRICS_FILE).read_text())
    except (OSError, ValueError) as e:
      scripts.fail(f"{workdir / METRICS_FILE} cannot be read ({type(e).__name__}); a finished "
                   "experiments/train.py run writes it.")
    if not isinstance(metrics, dict):
      scripts.fail(f"{workdir / METRICS_FILE} is not a JSON object; a finished "
                   "experiments/train.py run writes one.")
    if bad := _not_finite(metrics.get("final")):
      scripts.fail(f"{workdir / METRICS_FILE} holds {bad}, which no finished run records; "
                   "evaluate the run again with experiments/evaluate.py.")
    try:
      if "replicas" in metrics:
        several[_task(metrics)].append(seeds_row(workdir.name, metrics))
      elif _task(metrics) == "separate":
        # The trivial row once per distinct test set (it does not depend on the run).
        separate.extend(r for r in separate_rows(workdir.name, metrics) if r not in separate)
      else:
        rows.append(row(workdir.name, metrics))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
      scripts.fail(f"{workdir / METRICS_FILE} lacks what a finished run writes "
                   f"({type(e).__name__}: {e}); train it to the end with experiments/train.py.")
  tables = [(HEADER, rows), (SEPARATE_HEADER, separate)]
  tables += [(seeds_header(task), lines) for task, lines in several.items()]
  for header, lines in tables:
    if lines:
      scripts.say(header)
      scripts.say("\n".join(lines))


if __name__ == "__main__":
  scripts.run(main)
