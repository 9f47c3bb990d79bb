"""Params files and PyTorch state_dicts (jaxae/weights.py)."""

import errno
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import numpy_torch_forward, tiny_splits, torch_layers
from jaxae import (Config, create_train_state, eval_step, files, from_torch_state_dict,
                   load_params, save_params, seeds)
from jaxae.models import model_from_config
from jaxae.run.train_and_evaluate import train_and_evaluate
from jaxae.weights import ParamsFileError


def _trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_a_finished_run_writes_params_that_reproduce_its_test_loss(tmp_path):
  config = Config(epochs=1, batch_size=16, features=(4, 8), weight_decay=0.01)
  train, test = tiny_splits(32, 8)
  metrics = train_and_evaluate(config, train, test, tmp_path, log=lambda _: None)
  params, loaded = load_params(tmp_path / "params.msgpack")
  assert loaded == config
  state = create_train_state(jax.random.key(0), loaded, steps_per_epoch=1)
  loss = jax.jit(eval_step)(state.replace(params=params), state.task.examples(test))["loss"]
  assert float(loss) == pytest.approx(metrics["final"]["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_several_seeds_are_stacked_and_load_one_by_one(tmp_path):
  config = Config(num_seeds=3, seed=5, features=(4, 8))
  stacked = seeds.create_train_states(config, steps_per_epoch=1).params
  save_params(tmp_path / "p.msgpack", stacked, config)
  params, loaded = load_params(tmp_path / "p.msgpack")
  _trees_equal(params, stacked)
  assert loaded == config
  one, one_config = load_params(tmp_path / "p.msgpack", replica=2)
  _trees_equal(one, jax.tree.map(lambda x: x[2], stacked))
  assert one_config == config.replace(seed=7, num_seeds=1)
  # Replica 2 is seed 7's own initialization.
  _trees_equal(one, create_train_state(jax.random.key(7), one_config, steps_per_epoch=1).params)
  with pytest.raises(ParamsFileError, match="replica=3 is not one of 0..2"):
    load_params(tmp_path / "p.msgpack", replica=3)


@pytest.mark.slow
def test_unusable_files_are_named_in_one_line(tmp_path):
  config = Config(features=(4, 8))
  params = create_train_state(jax.random.key(0), config).params
  with pytest.raises(ParamsFileError, match="do not fit the config's model"):
    save_params(tmp_path / "p.msgpack", params, Config(features=(4, 16)))
  (tmp_path / "garbage.msgpack").write_bytes(b"\x00not msgpack")
  cases = [(tmp_path / "missing.msgpack", "cannot read"),
           (tmp_path / "garbage.msgpack", "is not a jaxae params file")]
  for path, message in cases:
    with pytest.raises(ParamsFileError, match=message) as e:
      load_params(path)
    assert "\n" not in str(e.value)


def _random_state_dict(layers, rng):
  state_dict = {}
  for i, (kind, c_in, c_out) in enumerate(layers):
    shape = (c_out, c_in, 4, 4) if kind == "conv" else (c_in, c_out, 4, 4)
    state_dict[f"{2 * i}.weight"] = rng.normal(0, 0.2, shape).astype(np.float32)
    state_dict[f"{2 * i}.bias"] = rng.normal(0, 0.2, (c_out,)).astype(np.float32)
  return state_dict


@pytest.mark.slow
@pytest.mark.parametrize("conv_impl", ["reference", "gemm"])
def test_a_torch_state_dict_computes_what_pytorch_computes(conv_impl):
  rng = np.random.default_rng(0)
  layers = torch_layers()
  state_dict = _random_state_dict(layers, rng)
  x_NCHW = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
  expected = numpy_torch_forward({k: v.astype(np.float64) for k, v in state_dict.items()},
                            x_NCHW.astype(np.float64), layers)
  config = Config(conv_impl=conv_impl)
  params = from_torch_state_dict(state_dict, config)
  x_NHWC = jnp.asarray(x_NCHW.transpose(0, 2, 3, 1))
  got = jax.jit(model_from_config(config).apply)({"params": params}, x_NHWC)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected, rtol=1e-4, atol=1e-4)


def test_a_state_dict_of_other_widths_is_named():
  state_dict = _random_state_dict(torch_layers((16, 32, 64)), np.random.default_rng(0))
  with pytest.raises(ParamsFileError, match=r"state_dict\['0.weight'\] has shape \(16, 3, 4, 4\)"):
    from_torch_state_dict(state_dict, Config(features=(8, 32, 64)))
  del state_dict["10.bias"]
  with pytest.raises(ParamsFileError, match="6 weights and 5 biases"):
    from_torch_state_dict(state_dict)
  with pytest.raises(ParamsFileError, match="original model only"):
    from_torch_state_dict(state_dict, Config(model="unet"))


@pytest.mark.slow
def test_params_files_hold_json_configs(tmp_path):
  # The file names its config in JSON, readable without jaxae (msgpack + json).
  from flax import serialization  # pylint: disable=g-import-not-at-top
  config = Config(features=(4, 8), learning_rate=3e-4)
  save_params(tmp_path / "p.msgpack", create_train_state(jax.random.key(0), config).params, config)
  payload = serialization.msgpack_restore((tmp_path / "p.msgpack").read_bytes())
  assert json.loads(payload["config"])["learning_rate"] == 3e-4
  assert payload["format"] == "jaxae.params" and payload["version"] == 1


def test_a_params_file_that_cannot_be_written_leaves_no_temporary(tmp_path):
  (tmp_path / "taken").mkdir()  # A directory where the file should go.
  params = create_train_state(jax.random.key(0)).params
  # Named as the path given (before: a rename from a temporary written beside it).
  with pytest.raises(IsADirectoryError, match=f"Is a directory: '{tmp_path / 'taken'}'$"):
    save_params(tmp_path / "taken", params, Config())

  def full_disk(f):
    f.write(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(OSError, match="No space left on device"):
    files.write_atomically(tmp_path / "params.msgpack", full_disk)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def _crafted(tmp_path, change):
  """A params file of the default model whose payload `change(payload)` altered, as msgpack."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  path = tmp_path / "crafted.msgpack"
  save_params(path, create_train_state(jax.random.key(0)).params, Config())
  payload = serialization.msgpack_restore(path.read_bytes())
  change(payload)
  path.write_bytes(serialization.msgpack_serialize(payload))
  return path


def _set_kernel(value_fn):
  def change(payload):
    kernel = payload["params"]["enc0"]["kernel"]
    payload["params"]["enc0"]["kernel"] = value_fn(kernel)
  return change


def _set_config(key, value):
  def change(payload):
    config = json.loads(payload["config"])
    config[key] = value
    payload["config"] = json.dumps(config)
  return change


@pytest.mark.parametrize("change, message", [
    (_set_kernel(lambda k: k.astype(np.int32)), "enc0/kernel holds int32 values"),
    (_set_kernel(lambda k: k.astype(np.uint8)), "enc0/kernel holds uint8 values"),
    (_set_kernel(lambda k: k > 0), "enc0/kernel holds bool values"),
    (_set_kernel(lambda k: k.astype(np.complex64)), "enc0/kernel holds complex64 values"),
    (_set_kernel(lambda k: np.where(k > 0, np.nan, k)), "enc0/kernel holds NaN or infinite"),
    (_set_kernel(lambda k: np.full_like(k, np.inf)), "enc0/kernel holds NaN or infinite"),
    (_set_config("model", "bogus"), "holds an unusable config: .*bogus"),
    (lambda payload: payload.update(config="[" * 200_000 + "]" * 200_000),
     "holds an unusable config"),
])
def test_a_params_file_of_garbage_is_refused_in_one_line(tmp_path, change, message):
  """Before: evaluate.py scored such files (loss 1.7e15 or NaN, exit 0), or raised a ValueError
  or RecursionError traceback."""
  with pytest.raises(ParamsFileError, match=message):
    load_params(_crafted(tmp_path, change))
