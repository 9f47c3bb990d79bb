"""The two source datasets, MNIST and CIFAR-10: their splits as NumPy arrays, without TensorFlow.

(jaxae/dataset.py mixes them into the experiment's mean images.)

Prepared ArrayRecord files are read directly: each record is a tf.Example (parsed with the proto
module tfds ships) whose PNG OpenCV decodes in a thread pool: OpenCV releases the GIL and decodes
these small PNGs faster than PIL (tfds's own advice; docs/speed.md). Other sources (tfds's mock
data in tests, `download=True`) go through `tfds.data_source`.

Decoded splits are cached as .npy files outside the data directory, keyed by the SHA-256 of the
prepared files' contents: re-preparing a dataset invalidates its cache, while a copy or
re-creation of the same files (the project machines re-create ../shared whenever they start)
keeps it. Each split keeps one cache entry; a new one replaces the others. An entry carries a
SHA-256 of its arrays, checked on every read: a damaged entry is decoded again, with a warning.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import pathlib
import threading
import time
from typing import Sequence

import numpy as np

from jaxae import extras

DATASETS = {
    # name: (image shape, tfds version prepared in ../shared)
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
SPLITS = ("train", "test")
_CACHE_FORMAT = 2  # 1: one .npz per split keyed by file names, sizes and times.
# Records per decoding task: small enough to balance the threads, large enough to amortize.
_TASK_RECORDS = 4096


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not prepared in the data directory."""


class DataError(RuntimeError):
  """A prepared dataset's file cannot be read (the message names it)."""


def default_cache_dir() -> pathlib.Path:
  root = os.environ.get("JAXAE_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxae")
  return pathlib.Path(root)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """The tfds data directory: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets.

  Raises:
    ValueError: an empty `data_dir` (it would otherwise mean the current directory).
  """
  if data_dir is not None and not str(data_dir).strip():
    raise ValueError("data_dir is empty; pass None for $TFDS_DATA_DIR or ~/tensorflow_datasets.")
  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  return pathlib.Path(data_dir).expanduser().resolve()


def prepare_command(name: str, data_dir: pathlib.Path) -> str:
  return (f"pip install 'jaxae[prepare]' && tfds build {name} --data_dir={data_dir} "
          "--file_format=array_record")


def prepared_files(name: str, split: str, data_dir: pathlib.Path) -> list[pathlib.Path]:
  """The ArrayRecord shards of the newest prepared version, or [] if there are none."""
  dataset_dir = data_dir / name
  if not dataset_dir.is_dir():
    return []
  versions = sorted((p for p in dataset_dir.iterdir() if p.is_dir() and p.name[:1].isdigit()),
                    key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
  for version_dir in reversed(versions):
    shards = sorted(version_dir.glob(f"{name}-{split}.array_record-*"))
    info = version_dir / "dataset_info.json"
    if shards and info.is_file():
      return [info, *_listed_shards(name, split, info, shards)]
  return []


def _listed_shards(name: str, split: str, info: pathlib.Path,
                   found: list[pathlib.Path]) -> list[pathlib.Path]:
  """`found`, if they are the split's shards that dataset_info.json lists, each a file; else
  DataError: a stray or missing shard would change the data without a word."""
  try:
    splits = json.loads(info.read_text())["splits"]
    count = len(next(s["shardLengths"] for s in splits if s["name"] == split))
  except (OSError, ValueError, KeyError, StopIteration, TypeError) as e:
    raise DataError(f"{info} cannot be read as tfds's dataset_info.json ({type(e).__name__}); "
                    f"prepare {name} again.") from None
  listed = [info.parent / f"{name}-{split}.array_record-{i:05d}-of-{count:05d}"
            for i in range(count)]
  if stray := sorted(set(found) - set(listed)):
    raise DataError(f"{stray[0]} is not one of the {count} {name} {split} shard(s) that {info} "
                    "lists: it would be read as more data; move it out of that folder.")
  for shard in listed:
    if not shard.is_file():
      what = ("missing" if not shard.is_symlink() and not shard.exists() else
              "a directory" if shard.is_dir() else "a symbolic link to nothing")
      raise DataError(f"{shard}, a {name} {split} shard that {info} lists, is {what}; prepare "
                      f"{name} again.")
  return listed


def _open_source(name: str, split: str, data_dir: pathlib.Path | None, download: bool):
  tfds = extras.load("tensorflow_datasets", "data")

  return tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                          download=download)


def _decode(source, name: str, split: str,
            data_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Every example of a `tfds.data_source` (not prepared files: those go to `_read_prepared`)."""
  images, labels = [], []
  for start in range(0, len(source), _TASK_RECORDS):
    keys = list(range(start, min(start + _TASK_RECORDS, len(source))))
    try:
      examples = source.__getitems__(keys)
    except TypeError:  # tfds.testing.mock_data's sources have no working batched read.
      examples = [source[k] for k in keys]
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(name, split, data_dir, start, e) from None
    images += [example["image"] for example in examples]
    labels += [example["label"] for example in examples]
  if not images:
    return np.zeros((0,), np.uint8), np.zeros((0,), np.int64)
  return np.stack(images).astype(np.uint8, copy=False), np.asarray(labels, dtype=np.int64)


def _shard_of(name: str, split: str, data_dir: pathlib.Path | None, index: int) -> str:
  """The prepared file that holds record `index` of a split (tfds's shard lengths say which)."""
  files = prepared_files(name, split, resolve_data_dir(data_dir))
  shards = files[1:]
  try:
    info = json.loads(files[0].read_text())
    lengths = next(s["shardLengths"] for s in info["splits"] if s["name"] == split)
    shard = int(np.searchsorted(np.cumsum([int(n) for n in lengths]), index, side="right"))
    return f"{shards[shard]} (record {index})"
  except (OSError, ValueError, KeyError, IndexError, StopIteration, TypeError):
    return f"a record of {name} {split} in {', '.join(map(str, shards)) or data_dir}"


def _fingerprint(files: list[pathlib.Path]) -> str:
  """SHA-256 of the files' contents, in order."""
  h = hashlib.sha256()
  for f in files:
    with open(f, "rb") as fh:
      h.update(hashlib.file_digest(fh, "sha256").digest())
  return h.hexdigest()


def _cache_path(name: str, split: str, files: list[pathlib.Path], cache_dir: pathlib.Path):
  """The cache entry's images file (its labels sit beside it: `_labels_path`)."""
  h = hashlib.sha256(json.dumps([_CACHE_FORMAT, name, split, _fingerprint(files)]).encode())
  return cache_dir / f"{name}-{split}-{h.hexdigest()[:20]}.images.npy"


def _labels_path(images_path: pathlib.Path) -> pathlib.Path:
  return images_path.with_name(images_path.name.replace(".images.npy", ".labels.npy"))


def _checksum_path(images_path: pathlib.Path) -> pathlib.Path:
  return images_path.with_name(images_path.name.replace(".images.npy", ".sha256"))


def _array_checksum(images: np.ndarray, labels: np.ndarray) -> str:
  """SHA-256 of an entry's arrays."""
  h = hashlib.sha256()
  for array in (images, labels):
    h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
  return h.hexdigest()


def _read_cache(path: pathlib.Path, shape: tuple[int, ...]):
  """The entry's (images, labels), or None if it is missing, of another form, or damaged.

  A damaged entry (its arrays no longer match the checksum written with them) is a miss with
  one warning: the caller decodes the split again and writes the entry anew.
  """
  try:
    # Mapped read-only, not read: pages come in as they are used, where a read copies the whole
    # array. Replacing or deleting the file leaves a mapping intact.
    images = np.load(path, mmap_mode="r", allow_pickle=False)
    labels = np.array(np.load(_labels_path(path), mmap_mode="r", allow_pickle=False))
    stored = _checksum_path(path).read_text().strip()
  except Exception:  # pylint: disable=broad-except
    return None  # A missing or unreadable entry is just a miss (entries before checksums too).
  if (images.dtype != np.uint8 or images.shape[1:] != shape or labels.shape != images.shape[:1]
      or labels.dtype != np.int64):
    return None
  if _array_checksum(images, labels) != stored:
    logging.warning("jaxae: the dataset cache entry %s does not match its checksum (damaged); "
                    "decoding the split again and rewriting it.", path)
    return None
  return images, labels


def _write_cache(path: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the entry, then removes the split's other entries (older data, older formats)."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    checksum = _array_checksum(images, labels)
    # The checksum last: an entry is complete (and read) only once it is there.
    for target, write in ((_labels_path(path), lambda f: np.save(f, labels, allow_pickle=False)),
                          (path, lambda f: np.save(f, images, allow_pickle=False)),
                          (_checksum_path(path), lambda f: f.write(checksum.encode() + b"\n"))):
      # A temporary file renamed into place: a killed process never leaves half an entry. Its
      # name carries this process's id, so a later load can tell a dead writer's file.
      tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
      try:
        with open(tmp, "wb") as f:
          write(f)
        os.replace(tmp, target)
      finally:
        tmp.unlink(missing_ok=True)  # E.g. a full disk: leave no partial file behind.
  except OSError as e:
    logging.warning("jaxae: could not write the dataset cache %s (%s); continuing without it.",
                    path, e)
    return
  split_prefix = path.name.rsplit("-", 1)[0] + "-"
  keep = {path.name, _labels_path(path).name, _checksum_path(path).name}
  for old in path.parent.glob(split_prefix + "*"):
    if old.name not in keep and not old.name.endswith(".tmp") and old.name.count("-") == 2:
      old.unlink(missing_ok=True)


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

  Images read from the cache are a read-only memory map of it (copy them to write into them).

  Args:
    name: "mnist" or "cifar10".
    split: "train" or "test".
    data_dir: the tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    download: let tfds download and prepare a missing dataset (needs the `prepare` extra).
    cache: read and write decoded arrays under `cache_dir` (never inside `data_dir`).
    cache_dir: default $JAXAE_CACHE_DIR or ~/.cache/jaxae.
    num_workers: decoding threads (default: one per core).

  Raises:
    DatasetNotFoundError: the dataset is not prepared in `data_dir` (and download is False).
    ValueError: an unknown dataset or split name.
  """
  return load_splits([(name, split)], data_dir, download=download, cache=cache,
                     cache_dir=cache_dir, num_workers=num_workers)[0]


def load_splits(requests: Sequence[tuple[str, str]], data_dir: str | os.PathLike | None = None,
                *, download: bool = False, cache: bool = True,
                cache_dir: str | os.PathLike | None = None,
                num_workers: int | None = None,
                write_behind: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
  """`load_split` for several `(name, split)` pairs, decoding all of them in one thread pool.

  With `write_behind`, new cache entries are written by a background thread while the caller
  goes on (e.g. preprocessing).
  """
  for name, split in requests:
    if name not in DATASETS:
      raise ValueError(f"Unknown dataset {name!r}; jaxae loads one of {sorted(DATASETS)}.")
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  resolved_dir = resolve_data_dir(data_dir)
  cache_root = pathlib.Path(cache_dir or default_cache_dir())
  workers = max(1, num_workers if num_workers is not None else (os.cpu_count() or 1))
  if cache:
    _remove_stale_temporaries(cache_root)

  results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(requests)
  to_read: dict[int, tuple[list[pathlib.Path], pathlib.Path | None]] = {}  # Files, cache entry.
  for i, (name, split) in enumerate(requests):
    files = prepared_files(name, split, resolved_dir)
    if files:
      entry = _cache_path(name, split, files, cache_root) if cache else None
      results[i] = entry and _read_cache(entry, DATASETS[name])
      if results[i] is None:
        to_read[i] = files, entry
    else:
      # Not prepared here: tfds reads it (mock data), or downloads and prepares it first.
      source = _open_checked(name, split, resolved_dir, download)
      results[i] = _decode(source, name, split, resolved_dir)

  if to_read:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for i, (files, _) in to_read.items():
        results[i] = _read_prepared(*requests[i], files, resolved_dir, pool)
    entries = [(entry, *results[i]) for i, (_, entry) in to_read.items() if entry]
    if write_behind:
      # A thread that is not a daemon: the interpreter finishes the writes before it exits.
      threading.Thread(target=lambda: [_write_cache(*e) for e in entries], daemon=False,
                       name="jaxae-cache-writer").start()
    else:
      for e in entries:
        _write_cache(*e)

  for i, (name, split) in enumerate(requests):
    images, _ = results[i]
    if images.shape[1:] != DATASETS[name]:
      raise ValueError(f"{name} {split}: expected images of shape [N, "
                       f"{', '.join(map(str, DATASETS[name]))}], got {images.shape}.")
  return results


def _read_prepared(name: str, split: str, files: list[pathlib.Path], data_dir: pathlib.Path,
                   pool: concurrent.futures.Executor) -> tuple[np.ndarray, np.ndarray]:
  """A prepared split's images and labels in tfds order, decoded by `pool`'s threads."""
  # Imported here: only a cold load needs them.
  cv2 = extras.load("cv2", "data")
  array_record_data_source = extras.load("array_record.python.array_record_data_source", "data")
  tf_example_pb2 = extras.load("tensorflow_datasets.proto", "data").tf_example_pb2

  shards = [str(f) for f in files[1:]]
  try:
    n = len(array_record_data_source.ArrayRecordDataSource(shards))
  except Exception as e:  # pylint: disable=broad-except
    raise _damaged(name, split, data_dir, 0, e) from None
  shape = DATASETS[name]
  images = np.empty((n, *shape), np.uint8)
  labels = np.empty((n,), np.int64)

  def read(start: int, stop: int) -> None:
    index = start
    try:
      # One reader per task: readers are not shared between threads.
      source = array_record_data_source.ArrayRecordDataSource(shards)
      for index, record in enumerate(source.__getitems__(range(start, stop)), start):
        feature = tf_example_pb2.Example.FromString(record).features.feature
        png = np.frombuffer(feature["image"].bytes_list.value[0], np.uint8)
        image = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
        if image is None or image.dtype != np.uint8 or image.size != images[index].size:
          raise ValueError(f"not a {'x'.join(map(str, shape))} uint8 PNG image")
        # OpenCV returns colour as BGR (converted in place, without the GIL) and grey without
        # its channel axis.
        if image.ndim == 3:
          cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=images[index])
        else:
          images[index, ..., 0] = image
        labels[index] = feature["label"].int64_list.value[0]
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(name, split, data_dir, index, e) from None

  tasks = [pool.submit(read, a, min(a + _TASK_RECORDS, n)) for a in range(0, n, _TASK_RECORDS)]
  for task in tasks:
    task.result()
  return images, labels


def _damaged(name: str, split: str, data_dir: pathlib.Path, index: int, e: Exception) -> DataError:
  # ArrayRecord's, protobuf's and OpenCV's errors do not say which file; a user needs to know.
  return DataError(f"{_shard_of(name, split, data_dir, index)} cannot be read "
                   f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                   f"the prepared file is damaged: prepare {name} again with: "
                   f"{prepare_command(name, data_dir)}")


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
