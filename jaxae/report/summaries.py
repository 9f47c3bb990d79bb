"""The console's lines: each epoch's, and a run's final numbers (one seed, or their spread)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxae.seeds import spread, spread_of


def format_value(value: float | Sequence[float], digits: int = 6) -> str:
  """A loss as printed per epoch: itself, or for replicas their mean ± standard deviation."""
  if isinstance(value, (list, tuple, np.ndarray)):
    s = spread(value)
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
  return f"{value:.{digits}f}"


def epoch_line(epoch: int, epochs: int, train_loss, test_loss, seconds: float, images: int,
               remaining_s: float, replicas: int = 1) -> str:
  """The epoch's console line; replicas' losses as their mean ± standard deviation.

  With replicas, the rate counts replica-images (each replica trains on every image), as
  benchmark.py does: per mean image it would read N times too slow.
  """
  count, unit = ((images * replicas, "replica-images/s") if replicas > 1
                 else (images, "images/s"))
  return (f"epoch {epoch:3d}/{epochs}  train_loss {format_value(train_loss)}  "
          f"test_loss {format_value(test_loss)}  "
          f"{count / max(seconds, 1e-9):8.0f} {unit}  {seconds:6.1f} s  "
          f"ETA {remaining_s / 60:5.1f} min")


def seeds_summary(finals: list[dict[str, Any]], seeds: Sequence[int], task_name: str) -> str:
  """`summary` of one run, or for replicas the spread of every final number across them."""
  if len(finals) == 1:
    return summary(finals[0], task_name)
  return "\n".join(spread_lines(finals, seeds))


def summary(final: dict[str, Any], task_name: str = "reconstruct") -> str:
  """A run's final test loss and its task's metrics (final_metrics' keys), a few lines."""
  lines = [f"Final test loss {final['test_loss']:.6f} over {final['num_test_images']:,} images"]
  if "train_loss" in final:
    lines[0] += f"; train loss {final['train_loss']:.6f}"
  return "\n".join(lines + _TASK_LINES[task_name](final))


def _reconstruction_lines(final: dict[str, Any]) -> list[str]:
  def f(name):
    return f"{final[f'{name}_mean']:.4f} ± {final[f'{name}_std']:.4f}"
  return [f"  standard: SSIM {f('ssim_standard')}  PSNR {f('psnr_standard')} dB",
          f"  original: SSIM {f('ssim_original')}  PSNR {f('psnr_original')} dB"]


def _separation_lines(final: dict[str, Any]) -> list[str]:
  def row(label, m):
    return (f"  {label:<9} digit PSNR {m['digit_psnr_mean']:6.2f} ± "
            f"{m['digit_psnr_std']:.2f} dB  SSIM {m['digit_ssim_mean']:.4f}   "
            f"photo PSNR {m['photo_psnr_mean']:6.2f} ± "
            f"{m['photo_psnr_std']:.2f} dB  SSIM {m['photo_ssim_mean']:.4f}")
  return [row("estimate", final), row("trivial", final["trivial"])]


_TASK_LINES = {"reconstruct": _reconstruction_lines, "separate": _separation_lines}


def spread_lines(finals: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[str]:
  """Across the replicas: each final number's mean ± std [min, max], one per line.

  The per-image standard deviations ("*_std") are left to metrics.json, to keep this short.
  """
  lines = [f"Across {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), mean ± std [min, max]:"]

  def add(prefix: str, spreads: dict[str, Any]) -> None:
    for key, s in spreads.items():
      if key.endswith("_std"):
        continue
      if isinstance(s, dict) and "mean" in s and "std" in s and "min" in s:
        lines.append(f"  {prefix}{key:<24} {s['mean']:.6g} ± {s['std']:.3g} "
                     f"[{s['min']:.6g}, {s['max']:.6g}]")
      elif isinstance(s, dict):
        add(f"{prefix}{key}.", s)

  add("", spread_of(finals))
  return lines
