"""The training run in a workdir (jaxae/run/train_and_evaluate.py): resume, settings, limits,
divergence."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, tiny_splits
from jaxae import Config, seeds
from jaxae.run.checkpoints import Checkpointer
from jaxae.run.workdir import CHECKPOINT_DIR
from jaxae.run import workdir
from jaxae.run.errors import RunError
from jaxae.run.train_and_evaluate import train_and_evaluate


# The runs here test the run's machinery, not the model: one level of 4 channels compiles in a
# third of the default model's time.
TINY = (4,)


def _losses(metrics):
  return [(h["epoch"], h["train_loss"], h["test_loss"]) for h in metrics["history"]]


@pytest.mark.slow
def test_resumed_run_ends_with_the_uninterrupted_history(tmp_path):
  train, test = tiny_splits()
  config = Config(features=TINY, epochs=3, batch_size=16)
  quiet = lambda _: None
  straight = train_and_evaluate(config, train, test, tmp_path / "a", log=quiet)
  train_and_evaluate(config.replace(epochs=1), train, test, tmp_path / "b", log=quiet)
  resumed = train_and_evaluate(config, train, test, tmp_path / "b", log=quiet)
  assert _losses(resumed) == _losses(straight) and len(straight["history"]) == 3
  assert resumed["final"] == straight["final"]
  for name in ("metrics.json", "loss_curve.png", "reconstructions.png", "settings.json"):
    assert (tmp_path / "b" / name).is_file()
  final = straight["final"]
  assert {"ssim_standard_mean", "psnr_original_std", "test_loss", "train_loss"} <= set(final)


@pytest.mark.slow
def test_a_single_seed_checkpoint_without_the_replica_axis_resumes(tmp_path):
  """Until every run's state was stacked (jaxae/seeds.py), a single seed's checkpoints held its
  state without a replica axis: such a workdir resumes to the uninterrupted history."""
  train, test = tiny_splits()
  config = Config(features=TINY, epochs=2, batch_size=16)
  quiet = lambda _: None
  straight = train_and_evaluate(config, train, test, tmp_path / "a", log=quiet)
  train_and_evaluate(config.replace(epochs=1), train, test, tmp_path / "b", log=quiet)
  checkpoints = tmp_path / "b" / CHECKPOINT_DIR
  checkpointer = Checkpointer(checkpoints)
  restored = checkpointer.restore_latest(seeds.create_train_states(config, steps_per_epoch=3))
  checkpointer.close()
  assert restored.state.step.shape == (1,)
  shutil.rmtree(checkpoints)
  checkpointer = Checkpointer(checkpoints)
  checkpointer.save(1, seeds.replica(restored.state, 0), restored.history,
                    provenance=restored.provenance)
  checkpointer.close()
  resumed = train_and_evaluate(config, train, test, tmp_path / "b", log=quiet)
  assert _losses(resumed) == _losses(straight)
  assert resumed["final"] == straight["final"]


@pytest.mark.slow
def test_workdir_with_different_settings_is_refused_unless_overwrite(tmp_path):
  train, test = tiny_splits()
  quiet = lambda _: None
  config = Config(features=TINY, epochs=1, batch_size=16)
  train_and_evaluate(config, train, test, tmp_path, log=quiet)
  with pytest.raises(RunError, match="different settings.*batch_size"):
    train_and_evaluate(config.replace(batch_size=8), train, test, tmp_path, log=quiet)
  out = train_and_evaluate(Config(features=TINY, epochs=1, batch_size=8), train, test, tmp_path,
                           overwrite=True, log=quiet)
  assert out["config"]["batch_size"] == 8 and out["optimizer_steps"] == 5


@pytest.mark.slow
def test_limits_passed_to_the_library_are_applied_not_only_recorded(tmp_path):
  train, test = tiny_splits()  # 40 and 12 pairs.
  quiet = lambda _: None
  config = Config(features=TINY, epochs=1, batch_size=8)
  limited = train_and_evaluate(config, train, test, tmp_path / "a", train_limit=16,
                               test_limit=4, log=quiet)
  assert limited["optimizer_steps"] == 2 and limited["final"]["num_test_images"] == 4
  assert (limited["train_limit"], limited["test_limit"]) == (16, 4)
  # The same as a run on the first pairs, passed without limits.
  taken = train_and_evaluate(config, train.take(16), test.take(4), tmp_path / "b", log=quiet)
  assert _losses(limited) == _losses(taken) and limited["final"] == taken["final"]
  for limits, message in (({"train_limit": 41},
                           r"train_limit=41 is larger than the train split \(40 pairs\)"),
                          ({"test_limit": -1}, "test_limit=-1"),
                          ({"train_limit": 2.5}, "train_limit=2.5")):
    with pytest.raises(RunError, match=message):
      train_and_evaluate(config, train, test, tmp_path / "c", log=quiet, **limits)
  assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_run_resumes_under_another_conv_formulation(tmp_path):
  """conv_impl says how, not what: switching it (or a settings.json from before it existed,
  which named it conv_transpose) must not refuse the run."""
  train, test = tiny_splits()
  quiet = lambda _: None
  config = Config(features=TINY, epochs=1, batch_size=16)
  train_and_evaluate(config, train, test, tmp_path, log=quiet)
  settings_path = tmp_path / "settings.json"
  old = json.loads(settings_path.read_text())
  old.pop("conv_impl")
  settings_path.write_text(json.dumps({**old, "conv_transpose": "phases"}))
  lines = []
  out = train_and_evaluate(config.replace(epochs=2, conv_impl="reference"), train, test, tmp_path,
                           log=lines.append)
  assert f"Resuming {tmp_path} after epoch 1." in lines
  assert [h["epoch"] for h in out["history"]] == [1, 2]


@pytest.mark.slow
def test_diverging_run_stops_naming_epoch_and_step_and_keeps_checkpoints(tmp_path):
  train, test = tiny_splits()
  quiet = lambda _: None
  with pytest.raises(RunError, match=r"diverged.*epoch 1, step \d+ of 3") as e:
    # The default model: the one-level model's loss stays finite at this rate.
    train_and_evaluate(Config(epochs=3, batch_size=16, learning_rate=1e6), train, test, tmp_path,
                       log=quiet)
  assert e.value.exit_code == 1 and "lower --config.learning_rate" in str(e.value)
  assert not (tmp_path / "checkpoints" / "1").exists()  # The bad epoch is never saved.
  assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("options, message", [
    (dict(train_limit=8), r"batch_size=16 is larger than the training set \(8 pairs\)"),
    (dict(config=Config(lr_schedule="cosine", warmup_steps=9, epochs=3, batch_size=16)),
     "warmup_steps=9 is not smaller than the run's 9 optimizer steps"),
])
def test_a_run_refuses_batches_and_schedules_that_do_not_fit_its_data(tmp_path, options, message):
  """The schedule is checked by its owner (jaxae.optimizers.check_schedule), which the run asks
  before it writes anything; a batch larger than the data was refused by train.py alone."""
  train, test = tiny_splits()
  config = options.pop("config", Config(features=TINY, epochs=1, batch_size=16))
  with pytest.raises(RunError, match=message):
    train_and_evaluate(config, train, test, tmp_path / "w", log=lambda _: None, **options)
  assert not (tmp_path / "w").exists()


def test_a_divergence_under_an_absurd_normalization_names_the_normalization():
  """Before, every divergence advised a lower learning rate, also when a mean of 1000 had put
  the pixels around -2000."""
  from jaxae.config import Normalization  # pylint: disable=g-import-not-at-top
  from jaxae.run.train_and_evaluate import _divergence_advice  # pylint: disable=g-import-not-at-top
  absurd = Config(cifar_normalization=Normalization(mean=(1000.0,) * 3, std=(0.5,) * 3))
  assert "--config.cifar_normalization" in _divergence_advice(absurd)
  assert "learning_rate" not in _divergence_advice(absurd)
  assert _divergence_advice(Config()) == "lower --config.learning_rate and run again."


@pytest.mark.slow
def test_an_evaluation_batch_larger_than_the_test_split_is_the_split(tmp_path):
  """Before: --eval_batch_size=100000000 asked XLA for terabytes after a whole epoch."""
  train, test = tiny_splits()
  metrics = train_and_evaluate(Config(features=TINY, epochs=1, batch_size=16), train, test,
                               tmp_path, log=lambda _: None, eval_batch_size=100_000_000)
  assert metrics["final"]["num_test_images"] == len(test)


_KILLED_IN_A_FIGURE = """
import os, sys
import matplotlib.figure
from conftest import tiny_splits
from jaxae import Config
from jaxae.run.train_and_evaluate import train_and_evaluate

def half_a_png_then_die(self, file, **kwargs):
  (open(file, "wb") if isinstance(file, (str, os.PathLike)) else file).write(b"\\x89PNG\\r\\n")
  os._exit(9)
matplotlib.figure.Figure.savefig = half_a_png_then_die
train, test = tiny_splits()
train_and_evaluate(Config(features=(4,), epochs=1, batch_size=16), train, test, sys.argv[1],
                   log=lambda _: None)
"""


@pytest.mark.slow
def test_a_kill_while_a_figure_is_written_does_not_block_the_next_run(tmp_path):
  """Before: the kill left a partial loss_curve.png that every later run, --overwrite too,
  refused as not jaxae's. Now the figure is written beside it and renamed when whole."""
  killed = subprocess.run([sys.executable, "-c", _KILLED_IN_A_FIGURE, str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300, cwd=REPO / "tests",
                          env=dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{REPO}"))
  assert killed.returncode == 9, killed.stderr[-2000:]
  assert not (tmp_path / "w" / "loss_curve.png").exists()
  train, test = tiny_splits()
  metrics = train_and_evaluate(Config(features=TINY, epochs=1, batch_size=16), train, test,
                               tmp_path / "w", log=lambda _: None)
  assert len(metrics["history"]) == 1
  assert workdir.is_jaxae_file(tmp_path / "w" / "loss_curve.png")


def test_a_checkpoints_file_in_the_workdir_is_refused_before_any_epoch(tmp_path):
  """Before: the run trained a whole epoch, then failed to save it."""
  (tmp_path / "checkpoints").write_text("not a folder")
  train, test = tiny_splits()
  with pytest.raises(RunError, match=r"checkpoints is not a directory; a run keeps its "
                                     r"checkpoints there"):
    train_and_evaluate(Config(features=TINY, epochs=1, batch_size=16), train, test, tmp_path,
                       log=lambda _: None)
  assert (tmp_path / "checkpoints").read_text() == "not a folder"
