import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import shared_data_dir
from jaxae import DatasetNotFoundError, load_mixed, load_split, mix
from jaxae import sources as sources_lib
from jaxae.preprocess import mnist_to_rgb32


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_load_split_through_mock_data(name, shape, tmp_path):
  with tfds.testing.mock_data(num_examples=11):
    images, labels = load_split(name, "train", data_dir=str(tmp_path))
  assert images.shape == (11, *shape)
  assert images.dtype == np.uint8
  assert labels.shape == (11,) and np.issubdtype(labels.dtype, np.integer)


def test_load_mixed_preprocesses_only_the_splits_and_pairs_asked_for(tmp_path):
  with tfds.testing.mock_data(num_examples=11):
    limited = load_mixed(tmp_path, train_limit=4)
    test_only = load_mixed(tmp_path, splits=("test",), test_limit=3)
    whole = {split: mix(load_split("mnist", split, tmp_path), load_split("cifar10", split, tmp_path))
             for split in ("train", "test")}
    for limits, message in (({"train_limit": 12}, r"train_limit=12 is larger than the train "
                             r"split \(11 pairs\)"), ({"test_limit": -1}, "must be 0")):
      with pytest.raises(ValueError, match=message):
        load_mixed(tmp_path, **limits)
  with pytest.raises(ValueError, match="splits must name some of"):
    load_mixed(tmp_path, splits=("validation",))
  with pytest.raises(ValueError, match=r"e\.g\. \('test',\); got the string 'test'"):
    load_mixed(tmp_path, splits="test")
  assert sorted(limited) == ["test", "train"] and list(test_only) == ["test"]
  assert (len(limited["train"]), len(limited["test"]), len(test_only["test"])) == (4, 11, 3)
  for got, split, n in ((limited["train"], "train", 4), (limited["test"], "test", 11),
                        (test_only["test"], "test", 3)):
    np.testing.assert_array_equal(got.images, whole[split].images[:n])
    np.testing.assert_array_equal(got.cifar_labels, whole[split].cifar_labels[:n])
    np.testing.assert_array_equal(got.mnist_images, whole[split].mnist_images[:n])


def test_missing_dataset_error_names_dataset_directory_and_command(tmp_path):
  with pytest.raises(DatasetNotFoundError) as e:
    load_split("cifar10", "test", data_dir=tmp_path)
  message = str(e.value)
  assert "cifar10" in message and str(tmp_path) in message
  assert "tfds build cifar10" in message and "jaxae[prepare]" in message


@pytest.mark.parametrize("name,split", [("imagenet", "train"), ("mnist", "validation")])
def test_unknown_names_are_value_errors(name, split):
  with pytest.raises(ValueError, match="Unknown"):
    load_split(name, split)


def test_cache_key_follows_the_prepared_files_contents_not_their_times(tmp_path):
  f = tmp_path / "mnist-train.array_record-00000-of-00001"
  f.write_bytes(b"x" * 10)
  first = sources_lib._cache_path("mnist", "train", [f], tmp_path / "cache")
  os.utime(f, ns=(1, 1))  # Copied or re-created with the same bytes: the same entry.
  assert sources_lib._cache_path("mnist", "train", [f], tmp_path / "cache") == first
  f.write_bytes(b"x" * 9 + b"y")  # Re-prepared: another entry.
  assert sources_lib._cache_path("mnist", "train", [f], tmp_path / "cache") != first
  assert sources_lib._cache_path("mnist", "test", [f], tmp_path / "cache") != first


def test_damaged_cache_is_a_miss_and_a_new_entry_replaces_the_splits_old_ones(tmp_path):
  path = tmp_path / "mnist-test-aaaa.images.npy"
  path.write_bytes(b"not an npy")
  assert sources_lib._read_cache(path, (28, 28, 1)) is None
  old = [tmp_path / "mnist-test-bbbb.images.npy", tmp_path / "mnist-test-bbbb.labels.npy",
         tmp_path / "mnist-test-cccc.npz"]  # An older entry, and one of the older format.
  other_split = tmp_path / "mnist-train-bbbb.images.npy"
  for f in (*old, other_split):
    f.write_bytes(b"x")
  sources_lib._write_cache(path, np.zeros((3, 28, 28, 1), np.uint8), np.arange(3))
  images, labels = sources_lib._read_cache(path, (28, 28, 1))
  assert images.shape == (3, 28, 28, 1) and list(labels) == [0, 1, 2]
  assert sources_lib._read_cache(path, (32, 32, 3)) is None  # Wrong shape: decode again.
  assert not any(f.exists() for f in old) and other_split.exists()
  sources_lib._labels_path(path).unlink()
  assert sources_lib._read_cache(path, (28, 28, 1)) is None  # Half an entry is a miss.


def test_a_cache_entry_whose_content_changed_is_detected_and_rewritten(tmp_path, caplog):
  """Same shape and dtype, other bytes (here the first images inverted): the stored SHA-256 of
  the arrays tells, and the load decodes the split again and rewrites the entry."""
  data_dir = shared_data_dir()
  images, _ = load_split("mnist", "test", data_dir, cache_dir=tmp_path / "cache")
  entry = next((tmp_path / "cache").glob("mnist-test-*.images.npy"))
  assert sources_lib._read_cache(entry, (28, 28, 1)) is not None
  damaged = np.load(entry)
  damaged[:8] = 255 - damaged[:8]
  np.save(entry, damaged)
  with caplog.at_level("WARNING"):
    again, _ = load_split("mnist", "test", data_dir, cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(again, images)
  assert sum("does not match its checksum" in r.getMessage() for r in caplog.records) == 1
  np.testing.assert_array_equal(np.load(entry), images)  # Rewritten.
  assert sources_lib._read_cache(entry, (28, 28, 1)) is not None


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_real_data_threaded_decode_and_cache_agree_with_tfds(name, tmp_path):
  data_dir = shared_data_dir()
  images, labels = load_split(name, "test", data_dir, cache_dir=tmp_path, num_workers=2)
  assert images.shape == (10_000, *sources_lib.DATASETS[name]) and labels.dtype == np.int64
  source = tfds.data_source(name, split="test", data_dir=str(data_dir), download=False)
  for i in (0, 4095, 4096, 5000, 9999):  # Both sides of a task boundary.
    assert np.array_equal(images[i], source[i]["image"]) and labels[i] == source[i]["label"]
  assert len(list(tmp_path.glob(f"{name}-test-*.images.npy"))) == 1
  cached, cached_labels = load_split(name, "test", data_dir, cache_dir=tmp_path)
  assert np.array_equal(cached, images) and np.array_equal(cached_labels, labels)
  assert not list(pathlib.Path(data_dir).rglob("*.npy"))  # Nothing written to the data dir.


def test_resize_matches_pil_bilinear_on_real_digits():
  """The original resized with PIL (uint8 out). Measured: within 1/255 of it, everywhere."""
  digits, _ = load_split("mnist", "test", shared_data_dir())
  digits = digits[:2000]
  ours = np.asarray(mnist_to_rgb32(digits))
  pil_u8 = np.stack([np.asarray(Image.fromarray(d[..., 0]).convert("RGB").resize(
      (32, 32), Image.BILINEAR)) for d in digits]).astype(np.float32) / 255.0
  pil_float = np.stack([np.asarray(Image.fromarray(d[..., 0].astype(np.float32) / 255.0).resize(
      (32, 32), Image.BILINEAR)) for d in digits])
  # Same interpolation as PIL's float path; PIL's uint8 path adds its rounding (at most 1 level).
  assert np.abs(ours[..., 0] - pil_float).max() <= 1e-6
  assert np.abs(ours - pil_u8).max() <= 1.0 / 255.0 + 1e-6
  assert np.abs(ours - pil_u8).mean() <= 0.5 / 255.0


def _prepared(root: pathlib.Path, shards: int = 1) -> pathlib.Path:
  """A prepared cifar10 folder as tfds lays it out, with `shards` train shards (empty files:
  which files make the split is decided before any is read)."""
  folder = root / "cifar10" / "3.0.2"
  folder.mkdir(parents=True)
  info = {"splits": [{"name": "train", "shardLengths": ["1"] * shards}]}
  (folder / "dataset_info.json").write_text(json.dumps(info))
  for i in range(shards):
    (folder / f"cifar10-train.array_record-{i:05d}-of-{shards:05d}").touch()
  return folder


def test_the_prepared_shards_are_those_dataset_info_lists(tmp_path):
  folder = _prepared(tmp_path, shards=2)
  assert [p.name for p in sources_lib.prepared_files("cifar10", "train", tmp_path)] == [
      "dataset_info.json", "cifar10-train.array_record-00000-of-00002",
      "cifar10-train.array_record-00001-of-00002"]
  # Before: a copy of a shard beside it was read as more data (60,000 pairs, repeated photos).
  (folder / "cifar10-train.array_record-00000-of-00002.bak").touch()
  with pytest.raises(sources_lib.DataError, match=r"array_record-00000-of-00002.bak is not one of "
                                                  r"the 2 cifar10 train shard\(s\)"):
    sources_lib.prepared_files("cifar10", "train", tmp_path)


@pytest.mark.parametrize("make, what", [
    (lambda shard: shard.unlink(), "missing"),
    (lambda shard: (shard.unlink(), shard.mkdir()), "a directory"),
    (lambda shard: (shard.unlink(), shard.symlink_to(shard.with_name("gone"))),
     "a symbolic link to nothing"),
])
def test_a_listed_shard_that_is_not_a_file_is_named_in_one_line(tmp_path, make, what):
  """Before: a directory or a dangling symlink was a traceback from the cache's fingerprint."""
  folder = _prepared(tmp_path, shards=2)
  make(folder / "cifar10-train.array_record-00001-of-00002")
  with pytest.raises(sources_lib.DataError, match=f"00001-of-00002, a cifar10 train shard that "
                                                  f".*dataset_info.json lists, is {what}"):
    sources_lib.prepared_files("cifar10", "train", tmp_path)
