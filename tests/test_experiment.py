"""End-to-end: the training run in a workdir (library), and the scripts as users run them."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_script, shared_data_dir, tiny_splits
from jaxae import Config, seeds
from jaxae.run.checkpoints import Checkpointer
from jaxae.run.workdir import CHECKPOINT_DIR
from jaxae.run import provenance
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
  for limits, message in (({"train_limit": 41}, "train_limit=41 must be 0 .* 40 pairs"),
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
  assert e.value.exit_code == 1
  assert not (tmp_path / "checkpoints" / "1").exists()  # The bad epoch is never saved.
  assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_train_and_evaluate_scripts_on_real_data(tmp_path):
  data_dir = shared_data_dir()
  # One level of 4 channels: the scripts are under test, not the model (the original model runs
  # on the real data in test_pretrained.py, the notebook and docs/library.md's code).
  common = [f"--data_dir={data_dir}", "--train_limit=64", "--test_limit=16",
            "--config.batch_size=32"]
  small = "--config.features=(4,)"
  run = run_script("train.py", *common, small, f"--workdir={tmp_path / 'run'}", "--config.epochs=2")
  assert run.returncode == 0, run.stderr
  assert "epoch   2/2" in run.stdout and "images/s" in run.stdout
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert [h["epoch"] for h in metrics["history"]] == [1, 2]
  assert metrics["final"]["num_test_images"] == 16 and metrics["optimizer_steps"] == 4
  for name in ("loss_curve.png", "reconstructions.png"):
    assert (tmp_path / "run" / name).stat().st_size > 1000
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1", "2"]
  assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))  # As it trains.

  ev = run_script("evaluate.py", f"--data_dir={data_dir}", f"--workdir={tmp_path / 'run'}",
            "--test_limit=16")
  assert ev.returncode == 0, ev.stderr
  result = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert result["num_test_images"] == 16 and result["epoch"] == 2
  assert result["ssim_original_mean"] == pytest.approx(metrics["final"]["ssim_original_mean"])
  assert (tmp_path / "run" / "comparison.png").stat().st_size > 1000

  # The run's params file (and the same exported from its checkpoint) evaluates without the run.
  export = run_script("export_params.py", f"--workdir={tmp_path / 'run'}",
                      f"--output={tmp_path / 'exported.msgpack'}")
  assert export.returncode == 0 and "epoch 2" in export.stdout, export.stderr
  assert ((tmp_path / "exported.msgpack").read_bytes()
          == (tmp_path / "run" / "params.msgpack").read_bytes())
  ev = run_script("evaluate.py", f"--data_dir={data_dir}", f"--workdir={tmp_path / 'eval'}",
                  f"--params={tmp_path / 'exported.msgpack'}", "--test_limit=16")
  assert ev.returncode == 0, ev.stderr
  from_file = json.loads((tmp_path / "eval" / "eval.json").read_text())
  assert from_file["epoch"] is None and from_file["params"].endswith("exported.msgpack")
  assert from_file["psnr_standard_mean"] == pytest.approx(metrics["final"]["psnr_standard_mean"])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["epochs", "batch", "limit", "data_dir", "workdir",
                                  "processes_incomplete", "process_id", "task", "model",
                                  "features", "unknown_field", "config_file"])
def test_bad_flags_get_one_line_exit_2_and_write_nothing(tmp_path, case):
  (tmp_path / "a_file").write_text("")
  workdir = tmp_path / "run"
  good_data = f"--data_dir={REPO.parent / 'shared' / 'tensorflow_datasets'}"
  args, message = {
      "epochs": ([good_data, "--config.epochs=0"], "--config.epochs must be a positive integer"),
      "batch": ([good_data, "--config.batch_size=-1"], "--config.batch_size must be a positive"),
      "limit": ([good_data, "--train_limit=-5"], "--train_limit must be 0"),
      "data_dir": ([f"--data_dir={tmp_path}/no_data"], "does not hold the prepared mnist"),
      "processes_incomplete": ([good_data, "--coordinator_address=localhost:1234"],
                               "needs all of --coordinator_address"),
      "process_id": ([good_data, "--coordinator_address=localhost:1234", "--num_processes=2",
                      "--process_id=2"], "--process_id must be in 0..1"),
      "task": ([good_data, "--config.task=denoise"], "--config.task must be one of"),
      "model": ([good_data, "--config.model=resnet"], "--config.model must be one of"),
      "features": ([good_data, "--config.features=(16,0)"],
                   "--config.features must be a non-empty sequence of positive integers"),
      "unknown_field": ([good_data, "--config.learning_rat=0.1"],
                        "--config.learning_rat is not a field of the config"),
      "config_file": ([good_data, "--config=experiments/configs/nope.py"],
                      "--config=experiments/configs/nope.py could not be loaded"),
  }.get(case, ([good_data], "cannot be written"))
  if case == "workdir":
    workdir = tmp_path / "a_file" / "run"  # A file where a folder must be.
  run = run_script("train.py", f"--workdir={workdir}", *args)
  assert run.returncode == 2
  assert message in run.stderr and "Traceback" not in run.stderr
  assert len(run.stderr.strip().splitlines()) == 1
  assert not workdir.exists()


def test_evaluate_without_checkpoint_is_one_line(tmp_path):
  run = run_script("evaluate.py", f"--workdir={tmp_path}")
  assert run.returncode == 2 and "holds no checkpoint" in run.stderr
  assert "Traceback" not in run.stderr


# The benchmark's lines per task are under test, not the model: the one-level seed model for both
# (the separate run takes 4.1 s with it, 6.5 s with a U-Net of (4, 8); the U-Net's runs are
# tested in test_seeds.py, test_tasks.py and on four devices).
TASK_FLAGS = {"reconstruct": ["--config.features=(4,)"],
              "separate": ["--config.task=separate", "--config.features=(4,)"]}


@pytest.mark.slow
def test_killed_multi_seed_run_resumes_and_evaluate_scores_every_replica(tmp_path):
  """kill -9 mid-run, then the same command: the histories of an uninterrupted run. Two seeds, so
  the checkpoint must hold both replicas; a single seed resumes alike (the same Checkpointer;
  test_resumed_run_ends_with_the_uninterrupted_history), and so does a separation run
  (tests/test_tasks.py)."""
  data_dir = shared_data_dir()
  # One level of 4 channels: the scripts' kill, resume and scoring are under test, not the model.
  args = [f"--data_dir={data_dir}", "--train_limit=96", "--test_limit=16",
          "--config.epochs=3", "--config.batch_size=32", "--config.num_seeds=2",
          "--config.features=(4,)"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  killed = subprocess.Popen([sys.executable, str(REPO / "experiments" / "train.py"), *args,
                             f"--workdir={tmp_path / 'killed'}"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = tmp_path / "killed" / "checkpoints" / "1"
  import time
  deadline = time.time() + 300
  while not first.exists() and time.time() < deadline and killed.poll() is None:
    time.sleep(0.05)
  killed.kill()  # SIGKILL, mid-run.
  killed.wait()
  assert first.exists()
  resumed = run_script("train.py", *args, f"--workdir={tmp_path / 'killed'}")
  assert resumed.returncode == 0, resumed.stderr
  assert " ± " in resumed.stdout  # Each epoch's losses as the mean ± spread of the replicas.
  assert "replica-images/s" in resumed.stdout  # Its rate counts every replica's images.
  straight = run_script("train.py", *args, f"--workdir={tmp_path / 'straight'}")
  assert straight.returncode == 0, straight.stderr
  a = json.loads((tmp_path / "killed" / "metrics.json").read_text())
  b = json.loads((tmp_path / "straight" / "metrics.json").read_text())
  assert _losses(a) == _losses(b) and len(a["history"]) == 3 and a["seeds"] == [0, 1]
  assert [r["history"] for r in a["replicas"]] == [r["history"] for r in b["replicas"]]

  ev = run_script("evaluate.py", f"--data_dir={data_dir}", f"--workdir={tmp_path / 'killed'}",
                  "--test_limit=16")
  assert ev.returncode == 0, ev.stderr
  result = json.loads((tmp_path / "killed" / "eval.json").read_text())
  assert [r["seed"] for r in result["replicas"]] == [0, 1] and result["epoch"] == 3
  for scored, trained in zip(result["replicas"], a["replicas"]):
    assert scored["psnr_standard_mean"] == pytest.approx(trained["final"]["psnr_standard_mean"])
  assert result["final"]["test_loss"]["max"] == pytest.approx(a["final"]["test_loss"]["max"])
  table = run_script("results_table.py", f"--workdirs={tmp_path / 'killed'}")
  assert table.returncode == 0 and "| killed | 2 (0..1) | 3 |" in table.stdout


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASK_FLAGS))
def test_benchmark_prints_json_lines(tmp_path, task):
  out = tmp_path / "bench.jsonl"
  seeds = ["--config.num_seeds=2"] if task == "reconstruct" else []
  run = run_script("benchmark.py", "--num_images=96", "--epochs=1", "--batch_sizes=32",
                   f"--output={out}", *TASK_FLAGS[task], *seeds)
  assert run.returncode == 0, run.stderr
  records = [json.loads(line) for line in out.read_text().splitlines()]
  metrics = {r["metric"] for r in records}
  assert {"compile_s", "train_images_per_s", "eval_images_per_s", "metrics_s"} <= metrics
  train = next(r for r in records if r["metric"] == "train_images_per_s")
  assert train["batch_size"] == 32 and train["value"] > 0 and train["device"]
  assert train["cpu"] and train["cpu"] == provenance.host()["cpu"]
  assert train["task"] == task
  if seeds:  # Beside the single-seed figure: 2 replicas as one program, and the time ratio.
    many = next(r for r in records if r["metric"] == "replica_images_per_s")
    ratio = next(r for r in records if r["metric"] == "seeds_time_ratio")
    assert many["num_seeds"] == 2 and many["value"] > 0 and ratio["value"] > 0
