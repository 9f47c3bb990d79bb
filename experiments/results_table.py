"""Prints RESULTS.md's table rows from training runs' metrics.json files.

    python experiments/results_table.py --workdirs=runs/faithful,runs/corrected

One Markdown row per workdir: epochs, optimizer steps, final train and test loss, SSIM and PSNR
(mean ± std over the test images) in both conventions, wall time (sum of the epochs' times) and
device, all read from the run's own metrics.json.
"""

import json
import pathlib

from absl import flags

from jaxae import cli
from jaxae.workdir import METRICS_FILE

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Training runs' workdirs, one row each.")

HEADER = ("| run | epochs | optimizer steps | train loss | test loss | SSIM original | "
          "PSNR original (dB) | SSIM standard | PSNR standard (dB) | wall time | device |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def row(name: str, metrics: dict) -> str:
  final = metrics["final"]

  def pm(key: str, digits: int) -> str:
    return f"{final[key + '_mean']:.{digits}f} ± {final[key + '_std']:.{digits}f}"

  minutes = sum(h["seconds"] for h in metrics["history"]) / 60
  device = metrics["platform"].upper() if metrics["platform"] == "cpu" else metrics["device"]
  cells = [name, str(len(metrics["history"])), f"{metrics['optimizer_steps']:,}",
           f"{final['train_loss']:.4f}", f"{final['test_loss']:.4f}",
           pm("ssim_original", 4), pm("psnr_original", 2), pm("ssim_standard", 4),
           pm("psnr_standard", 2), f"{minutes:.1f} min", device]
  return "| " + " | ".join(cells) + " |"


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdirs:
    cli.fail("--workdirs is required.")
  rows = []
  for workdir in map(pathlib.Path, FLAGS.workdirs):
    try:
      metrics = json.loads((workdir / METRICS_FILE).read_text())
    except (OSError, ValueError) as e:
      cli.fail(f"{workdir / METRICS_FILE} cannot be read ({type(e).__name__}); a finished "
               "experiments/train.py run writes it.")
    try:
      rows.append(row(workdir.name, metrics))
    except (KeyError, TypeError, ValueError) as e:
      cli.fail(f"{workdir / METRICS_FILE} lacks what a finished run writes ({type(e).__name__}: "
               f"{e}); train it to the end with experiments/train.py.")
  print(HEADER)
  print("\n".join(rows))


if __name__ == "__main__":
  cli.run(main)
