"""Loading MNIST and CIFAR-10 splits as NumPy arrays through `tfds.data_source` (no TensorFlow).

Decoding 130,000 PNG records is Python-bound (~100 us a record), so large splits are decoded by
one process per core, and decoded splits are cached as .npy files outside the data directory.
The cache key covers the prepared files' names, sizes and modification times, so re-preparing a
dataset invalidates it.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Sequence

import numpy as np

DATASETS = {
    # name: (image shape, tfds version prepared in ../shared)
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
SPLITS = ("train", "test")
_CACHE_FORMAT = 1
# Below this many records the process pool costs more than it saves.
_PARALLEL_MIN_RECORDS = 8192


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not prepared in the data directory."""


class DataError(RuntimeError):
  """A prepared dataset's file cannot be read (the message names it)."""


def default_cache_dir() -> pathlib.Path:
  root = os.environ.get("JAXAE_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxae")
  return pathlib.Path(root)


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  if data_dir is not None and not str(data_dir).strip():
    raise ValueError("data_dir is empty; pass None for $TFDS_DATA_DIR or ~/tensorflow_datasets.")
  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  return pathlib.Path(data_dir).expanduser().resolve()


def prepare_command(name: str, data_dir: pathlib.Path) -> str:
  return (f"pip install 'jaxae[prepare]' && tfds build {name} --data_dir={data_dir} "
          "--file_format=array_record")


def _prepared_files(name: str, split: str, data_dir: pathlib.Path) -> list[pathlib.Path]:
  """The ArrayRecord shards of the newest prepared version, or [] if there are none."""
  dataset_dir = data_dir / name
  if not dataset_dir.is_dir():
    return []
  versions = sorted((p for p in dataset_dir.iterdir() if p.is_dir() and p.name[:1].isdigit()),
                    key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
  for version_dir in reversed(versions):
    shards = sorted(version_dir.glob(f"{name}-{split}.array_record-*"))
    if shards and (version_dir / "dataset_info.json").is_file():
      return [version_dir / "dataset_info.json", *shards]
  return []


def _open_source(name: str, split: str, data_dir: pathlib.Path | None, download: bool):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                          download=download)


def _decode_range(name: str, split: str, data_dir: str | None, start: int, stop: int):
  data_dir = None if data_dir is None else pathlib.Path(data_dir)
  source = _open_source(name, split, data_dir, False)
  return _decode(source, range(start, stop), name, split, data_dir)


def _decode(source, indices, name: str, split: str,
            data_dir: pathlib.Path | None) -> tuple[np.ndarray, np.ndarray]:
  indices = list(indices)
  images, labels = [], []
  chunk = 2048
  for i in range(0, len(indices), chunk):
    keys = indices[i:i + chunk]
    try:
      examples = source.__getitems__(keys)
    except TypeError:  # tfds.testing.mock_data's sources have no working batched read.
      examples = [source[k] for k in keys]
    except Exception as e:  # pylint: disable=broad-except
      # ArrayRecord's and PIL's errors do not say which file; a user needs to know.
      raise DataError(f"{_shard_of(name, split, data_dir, keys[0])} cannot be read "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); the prepared file "
                      f"is damaged: prepare {name} again with: "
                      f"{prepare_command(name, data_dir or _resolve_data_dir(None))}") from None
    for example in examples:
      images.append(example["image"])
      labels.append(example["label"])
  if not images:
    return np.zeros((0,), np.uint8), np.zeros((0,), np.int64)
  return np.stack(images).astype(np.uint8, copy=False), np.asarray(labels, dtype=np.int64)


def _shard_of(name: str, split: str, data_dir: pathlib.Path | None, index: int) -> str:
  """The prepared file that holds record `index` of a split (tfds's shard lengths say which)."""
  files = _prepared_files(name, split, _resolve_data_dir(data_dir))
  shards = files[1:]
  try:
    info = json.loads(files[0].read_text())
    lengths = next(s["shardLengths"] for s in info["splits"] if s["name"] == split)
    shard = int(np.searchsorted(np.cumsum([int(n) for n in lengths]), index, side="right"))
    return f"{shards[shard]} (record {index})"
  except (OSError, ValueError, KeyError, IndexError, StopIteration, TypeError):
    return f"a record of {name} {split} in {', '.join(map(str, shards)) or data_dir}"


def _cache_path(name: str, split: str, files: list[pathlib.Path], cache_dir: pathlib.Path):
  h = hashlib.sha256()
  h.update(json.dumps([_CACHE_FORMAT, name, split]).encode())
  for f in files:
    st = f.stat()
    h.update(json.dumps([str(f.resolve()), st.st_size, st.st_mtime_ns]).encode())
  return cache_dir / f"{name}-{split}-{h.hexdigest()[:20]}.npz"


def _read_cache(path: pathlib.Path, shape: tuple[int, ...]):
  try:
    with np.load(path, allow_pickle=False) as z:
      images, labels = z["images"], z["labels"]
  except Exception:  # pylint: disable=broad-except
    return None  # A damaged cache is just a miss.
  if images.dtype != np.uint8 or images.shape[1:] != shape or labels.shape != images.shape[:1]:
    return None
  return images, labels


def _write_cache(path: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
  # Write to a temporary file and rename, so a killed process never leaves half a cache. The
  # temporary's name carries this process's id, so a later load can tell a dead writer's file.
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
      np.savez(f, images=images, labels=labels)
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)  # E.g. a full disk: leave no partial file behind.
    logging.warning("jaxae: could not write the dataset cache %s (%s); continuing without it.",
                    path, e)


def _remove_stale_temporaries(cache_dir: pathlib.Path) -> None:
  """Deletes cache temporaries whose writer is gone (killed mid-write, or a full disk)."""
  if not cache_dir.is_dir():
    return
  for tmp in cache_dir.glob("*.tmp"):
    pid = tmp.name.rsplit(".", 2)[-2] if tmp.name.count(".") >= 2 else ""
    try:
      if pid.isdigit():
        if _process_alive(int(pid)):
          continue
      elif time.time() - tmp.stat().st_mtime < 3600:  # Older versions' names hold no pid.
        continue
      tmp.unlink()
    except OSError:
      pass


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
               download: bool = False, cache: bool = True,
               cache_dir: str | os.PathLike | None = None,
               num_workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns `(images, labels)` of a split: uint8 [N, H, W, C] and int64 [N], in tfds order.

  Args:
    name: "mnist" or "cifar10".
    split: "train" or "test".
    data_dir: the tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    download: let tfds download and prepare a missing dataset (needs the `prepare` extra).
    cache: read and write decoded arrays under `cache_dir` (never inside `data_dir`).
    cache_dir: default $JAXAE_CACHE_DIR or ~/.cache/jaxae.
    num_workers: decoding processes for large splits (default: one per core).

  Raises:
    DatasetNotFoundError: the dataset is not prepared in `data_dir` (and download is False).
    ValueError: an unknown dataset or split name.
  """
  return load_splits([(name, split)], data_dir, download=download, cache=cache,
                     cache_dir=cache_dir, num_workers=num_workers)[0]


def load_splits(requests: Sequence[tuple[str, str]], data_dir: str | os.PathLike | None = None,
                *, download: bool = False, cache: bool = True,
                cache_dir: str | os.PathLike | None = None,
                num_workers: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
  """`load_split` for several `(name, split)` pairs, decoding all of them in one process pool."""
  for name, split in requests:
    if name not in DATASETS:
      raise ValueError(f"Unknown dataset {name!r}; jaxae loads one of {sorted(DATASETS)}.")
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  resolved_dir = _resolve_data_dir(data_dir)
  cache_root = pathlib.Path(cache_dir or default_cache_dir())
  workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
  if cache:
    _remove_stale_temporaries(cache_root)

  results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(requests)
  sizes: dict[int, int] = {}
  for i, (name, split) in enumerate(requests):
    files = _prepared_files(name, split, resolved_dir)
    if files and cache:
      results[i] = _read_cache(_cache_path(name, split, files, cache_root), DATASETS[name])
    if results[i] is None:
      source = _open_checked(name, split, resolved_dir, download)
      # Real prepared files go to the pool; small or mocked sources are decoded right here.
      if workers > 1 and len(source) >= _PARALLEL_MIN_RECORDS and _prepared_files(
          name, split, resolved_dir):
        sizes[i] = len(source)
      else:
        results[i] = _decode(source, range(len(source)), name, split, resolved_dir)

  if sizes:
    decoded = _decode_parallel([requests[i] for i in sizes], list(sizes.values()),
                               resolved_dir, workers)
    for i, result in zip(sizes, decoded):
      results[i] = result

  for i, (name, split) in enumerate(requests):
    images, labels = results[i]
    if images.shape[1:] != DATASETS[name]:
      raise ValueError(f"{name} {split}: expected images of shape [N, "
                       f"{', '.join(map(str, DATASETS[name]))}], got {images.shape}.")
    if cache and i in sizes:
      _write_cache(_cache_path(name, split, _prepared_files(name, split, resolved_dir),
                               cache_root), images, labels)
  return results


def _open_checked(name: str, split: str, data_dir: pathlib.Path, download: bool):
  try:
    return _open_source(name, split, data_dir, download)
  except Exception as e:  # pylint: disable=broad-except
    # tfds raises assorted types for a missing dataset; turn them into one actionable message.
    if download:
      raise
    raise DatasetNotFoundError(
        f"Dataset {name!r} (split {split!r}) is not prepared in {data_dir}. Point --data_dir "
        f"at a tfds data directory that holds it, or prepare it once with:\n  "
        f"{prepare_command(name, data_dir)}\n(tfds said: {type(e).__name__}: {e})") from None


def _init_worker(parent_pid: int) -> None:
  """Runs in each decoding worker: it exits when the parent does, also when the parent is
  killed (SIGKILL, SIGTERM), instead of idling on 300-500 MB until someone notices. Its logs
  stay quiet (tfds's advice on decoders, once per worker); errors reach the parent as exceptions.
  """
  logging.getLogger("absl").setLevel(logging.ERROR)
  if sys.platform.startswith("linux"):
    try:  # The kernel sends SIGKILL to this process when the parent dies.
      libc = ctypes.CDLL(None, use_errno=True)
      libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      pass
  if os.getppid() != parent_pid:  # The parent died before the line above took effect.
    os._exit(1)

  def watch():  # Portable fallback: poll for reparenting.
    while os.getppid() == parent_pid:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True).start()


def _decode_parallel(requests: list[tuple[str, str]], sizes: list[int], data_dir: pathlib.Path,
                     workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Decodes whole splits, each cut into `workers` ranges, in one pool of `workers` processes."""
  jobs = []
  for (name, split), n in zip(requests, sizes):
    bounds = np.linspace(0, n, workers + 1).astype(int)
    jobs += [(name, split, str(data_dir), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
  try:
    # Spawn, not fork: the parent may already hold JAX's threads.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                initializer=_init_worker,
                                                initargs=(os.getpid(),)) as pool:
      parts = list(pool.map(_decode_range, *zip(*jobs)))
  except (concurrent.futures.process.BrokenProcessPool, OSError) as e:
    # E.g. a __main__ that cannot be re-imported (a script read from stdin).
    logging.warning("jaxae: parallel decoding failed (%s); decoding in this process.", e)
    parts = [_decode_range(*job) for job in jobs]
  out = []
  for k in range(len(requests)):
    chunk = parts[k * workers:(k + 1) * workers]
    out.append((np.concatenate([p[0] for p in chunk]), np.concatenate([p[1] for p in chunk])))
  return out
