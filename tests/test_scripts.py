"""The experiment scripts (experiments/*.py) as users run them, and under abuse: each mistake or
accident gets one line (no traceback) and an exit code.

Cases that need no data run anywhere; those that read the real datasets skip where they are absent.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from conftest import REPO, run_script, shared_data_dir, tiny_splits
from jaxae import Config, create_train_state, load_params, save_params
from jaxae.run import provenance
from jaxae.run import workdir
from jaxae.run.train_and_evaluate import train_and_evaluate

GOOD_DATA = f"--data_dir={REPO.parent / 'shared' / 'tensorflow_datasets'}"


def _one_line(run, exit_code, message):
  assert run.returncode == exit_code, (run.returncode, run.stderr[-2000:])
  assert message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
  assert len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--config.epochs=abc"], "flag --config.epochs=abc"),  # absl alone exits 1 with usage text.
    (["--config.seed=4294967296", GOOD_DATA],
     "--config.seed must be an integer in 0..4294967295"),
    (["--config.seed=18446744073709551615", GOOD_DATA],
     "--config.seed must be an integer in 0..4294967295"),
    (["--data_dir="], "--data_dir is empty"),
    (["--config.num_seeds=0", GOOD_DATA], "--config.num_seeds must be a positive integer, got 0"),
    (["--config.num_seeds=-3", GOOD_DATA], "--config.num_seeds must be a positive integer, got -3"),
    (["--config=experiments/configs/faithful.py", "--config.full_batch=maybe", GOOD_DATA],
     "--config.full_batch=maybe"),
    (["--config=README.md", GOOD_DATA], "--config=README.md could not be loaded (SyntaxError"),
    (["--config=faithful", GOOD_DATA],
     "--config=faithful is not a file; did you mean --config=experiments/configs/faithful.py?"),
    (["--log_every_steps=-1", GOOD_DATA], "--log_every_steps must be 0"),
    (["--train_limit=50001", GOOD_DATA],
     "--train_limit=50001 is larger than the train split (50,000 pairs)."),
    (["--config.mnist_normalization.std=(0.2,0,0.2)", GOOD_DATA],
     "--config.mnist_normalization: Normalization stds must be positive"),
    (["--config.cifar_normalization.std=(0.5,0.5,1e999)", GOOD_DATA],
     "--config.cifar_normalization: Normalization stds must be positive and finite"),
    (["--config.pairing=shuffled", GOOD_DATA],
     "--config.pairing was removed (its results did not justify it; RESULTS.md and "
     "docs/speed.md); every run now uses pairing='fixed', and `git checkout 3b809d9` runs"),
])
def test_train_refuses_before_writing_anything(tmp_path, args, message):
  run = run_script("train.py", f"--workdir={tmp_path / 'run'}", *args)
  _one_line(run, 2, message)
  assert not (tmp_path / "run").exists()


def test_help_exits_0():
  run = run_script("train.py", "--help")
  assert run.returncode == 0 and "--workdir" in run.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "experiments").glob("*.py")))
def test_help_examples_keep_their_line_breaks(script):
  """A docstring's `\\` at a line's end joined its lines: --help showed the example's break as a
  run of spaces, a command no one could paste."""
  import ast  # pylint: disable=g-import-not-at-top
  doc = ast.get_docstring(ast.parse((REPO / "experiments" / script).read_text()), clean=False)
  assert doc and not [line for line in doc.splitlines() if re.search(r"\S {3,}--", line)]


@pytest.mark.slow
def test_a_script_run_through_the_script_server_is_the_fresh_process_s_run(tmp_path):
  """conftest.run_script forks its runs from tests/script_server.py: the same exit code, output
  and files as `python <script>` in a process of its own."""
  cases = [("train.py", ["--help"]),
           ("train.py", [f"--workdir={tmp_path / 'w'}", "--config.num_seeds=0", GOOD_DATA]),
           ("results_table.py", [f"--workdirs={tmp_path / 'none'}"])]
  for script, args in cases:
    served, fresh = run_script(script, *args), run_script(script, *args, fresh=True)
    assert (served.returncode, served.stdout, served.stderr) == (
        fresh.returncode, fresh.stdout, fresh.stderr), (script, args)
  assert [run_script(s, *a).returncode for s, a in cases] == [0, 2, 2]


def test_train_refuses_a_workdir_another_process_holds(tmp_path):
  with workdir.hold(tmp_path / "w"):
    run = run_script("train.py", f"--workdir={tmp_path / 'w'}", GOOD_DATA, "--overwrite")
  _one_line(run, 2, f"is in use by process {os.getpid()}")


@pytest.mark.slow
@pytest.mark.parametrize("script,args,message", [
    ("benchmark.py", ["--batch_sizes=abc"], "--batch_sizes must be a comma-separated list"),
    ("benchmark.py", ["--output=/no/such/folder/bench.jsonl"],
     "--output=/no/such/folder/bench.jsonl cannot be written (/no/such/folder is not a directory)"),
    ("benchmark.py", ["--config.modle=unet"], "--config.modle is not a field of the config"),
    ("time_to_quality.py", ["--num_seeds=0", GOOD_DATA], "--num_seeds must be positive"),
    ("time_to_quality.py", ["--config.task=separate", GOOD_DATA],
     "time_to_quality.py measures one-seed minibatch reconstruction configs"),
    ("time_to_quality.py", ["--config.optimizer=adam", GOOD_DATA],
     "--config.muon_learning_rate must be positive with optimizer='muon'"),
    # Each once checked only after the whole measurement.
    ("benchmark.py", ["--output=/tmp"], "--output=/tmp is a directory; name a file."),
    ("time_to_quality.py", ["--output=/tmp", GOOD_DATA], "--output=/tmp is a directory"),
    ("time_to_quality.py", ["--plot=/no/such/folder/x.png", GOOD_DATA],
     "--plot=/no/such/folder/x.png cannot be written"),
    ("time_to_quality.py", [f"--plot_with=a={REPO / 'README.md'}", GOOD_DATA],
     "is not an --output file of this script (JSON lines)"),
])
def test_measuring_scripts_check_their_flags_before_measuring(script, args, message):
  _one_line(run_script(script, *args), 2, message)


def test_results_table_names_a_metrics_file_missing_keys(tmp_path):
  (tmp_path / "metrics.json").write_text(json.dumps({"final": {"test_loss": 1.0}}))
  _one_line(run_script("results_table.py", f"--workdirs={tmp_path}"), 2,
            f"{tmp_path / 'metrics.json'} lacks what a finished run writes")


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A finished tiny run (library call, random data): what evaluate.py reads."""
  train, test = tiny_splits()
  path = tmp_path_factory.mktemp("trained")
  train_and_evaluate(Config(epochs=1, batch_size=16, features=(4,)), train, test, path,
                     log=lambda _: None)
  return path


@pytest.mark.slow
def test_evaluate_refuses_a_hand_edited_settings_file(tmp_path, trained_workdir):
  shutil.copytree(trained_workdir, tmp_path / "w")
  settings = json.loads((tmp_path / "w" / "settings.json").read_text())
  settings["features"] = "16,32,64"
  (tmp_path / "w" / "settings.json").write_text(json.dumps(settings))
  _one_line(run_script("evaluate.py", f"--workdir={tmp_path / 'w'}", GOOD_DATA), 2,
            "features must be a non-empty sequence of positive integers")


@pytest.mark.slow
@pytest.mark.parametrize("make, message", [
    (lambda path: path.write_bytes(b"not msgpack"), "is not a jaxae params file"),
    (lambda path: None, "cannot read"),
])
def test_evaluate_names_an_unusable_params_file(tmp_path, make, message):
  make(tmp_path / "p.msgpack")
  _one_line(run_script("evaluate.py", f"--workdir={tmp_path / 'out'}",
                       f"--params={tmp_path / 'p.msgpack'}", GOOD_DATA), 2, message)
  assert not (tmp_path / "out" / "eval.json").exists()


@pytest.mark.slow
def test_evaluate_checks_a_read_only_workdir_before_evaluating(tmp_path, trained_workdir):
  shutil.copytree(trained_workdir, tmp_path / "w")
  os.chmod(tmp_path / "w", 0o555)
  # Root ignores permission bits; an immutable folder stops root too (ext4, as here and in CI).
  chattr = subprocess.run(["chattr", "+i", str(tmp_path / "w")], capture_output=True)
  immutable = chattr.returncode == 0
  try:
    if os.geteuid() == 0 and not immutable:
      pytest.skip("cannot make a folder read-only for root here (no chattr)")
    run = run_script("evaluate.py", f"--workdir={tmp_path / 'w'}", GOOD_DATA)
  finally:
    if immutable:
      subprocess.run(["chattr", "-i", str(tmp_path / "w")], check=True)
    os.chmod(tmp_path / "w", 0o755)
  _one_line(run, 2, "cannot be written")
  assert "Evaluated" not in run.stdout  # Refused before the work, not after it.


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_keeps_the_checkpoints(tmp_path):
  data_dir = shared_data_dir()
  # Epochs of 64 images take milliseconds: enough of them that the run is still going. The
  # shapes and model of the real-data script run below, whose programs the compilation cache
  # holds when both run in one pytest run.
  args = [f"--data_dir={data_dir}", "--train_limit=64", "--test_limit=16",
          "--config.batch_size=32", "--config.features=(4,)", "--config.epochs=5000",
          f"--workdir={tmp_path / 'w'}"]
  proc = subprocess.Popen([sys.executable, str(REPO / "experiments" / "train.py"), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1"))
  checkpoints = tmp_path / "w" / "checkpoints"
  saved = lambda: [p for p in checkpoints.glob("*") if p.name.isdigit()]
  deadline = time.time() + 300
  while not saved() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-2000:]
  assert "interrupted; the checkpoints of the completed epochs are kept" in stderr
  assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr[-2000:]
  assert saved()  # What the message promises is kept (resuming is tested with kill -9).


def test_ctrl_c_that_lands_in_a_garbage_collector_callback_still_stops_the_script(tmp_path):
  # Python's own KeyboardInterrupt raised inside a gc callback (JAX registers one) is printed as
  # "Exception ignored" and lost: a run once trained on after a test's Ctrl-C.
  script = tmp_path / "script.py"
  script.write_text(
      "import gc, os, signal\n"
      "from jaxae.run import scripts\n"
      "def main(argv):\n"
      "  def callback(phase, info):\n"
      "    if phase == 'start':\n"
      "      os.kill(os.getpid(), signal.SIGINT)\n"
      "  gc.callbacks.append(callback)\n"
      "  gc.collect()\n"
      "  gc.callbacks.remove(callback)\n"
      "  print('went on after Ctrl-C', flush=True)\n"
      "scripts.run(main, interrupted='stopped here.')\n")
  run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert "went on" not in run.stdout
  _one_line(run, 130, "stopped here.")


def _copy_with_a_corrupt_mnist_test_shard(data_dir, target):
  """Links the real datasets into `target`, except a damaged copy of MNIST's test shard."""
  for dataset in ("mnist", "cifar10"):
    for version_dir in (data_dir / dataset).iterdir():
      (target / dataset / version_dir.name).mkdir(parents=True)
      for f in version_dir.iterdir():
        (target / dataset / version_dir.name / f.name).symlink_to(f)
  shard = next((target / "mnist").glob("*/mnist-test.array_record-*"))
  raw = bytearray(shard.read_bytes())
  raw[len(raw) // 2:len(raw) // 2 + 1024] = os.urandom(1024)
  shard.unlink()
  shard.write_bytes(bytes(raw))
  return shard


@pytest.mark.slow
def test_corrupt_data_shard_is_named_in_one_line(tmp_path):
  shard = _copy_with_a_corrupt_mnist_test_shard(shared_data_dir(), tmp_path / "data")
  run = run_script("train.py", f"--data_dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'w'}",
                   "--config.epochs=1", env={"JAXAE_CACHE_DIR": str(tmp_path / "cache")})
  _one_line(run, 2, f"{shard} (record ")
  assert "is damaged: prepare mnist again" in run.stderr



@pytest.mark.slow
@pytest.mark.parametrize("returned", ["None", "[1, 2]"])
@pytest.mark.parametrize("script", ["train.py", "benchmark.py"])
def test_a_config_file_that_returns_no_config_dict_is_one_line(tmp_path, script, returned):
  (tmp_path / "bad.py").write_text(f"def get_config():\n  return {returned}\n")
  args = [f"--workdir={tmp_path / 'w'}", GOOD_DATA] if script == "train.py" else []
  run = run_script(script, f"--config={tmp_path / 'bad.py'}", *args)
  _one_line(run, 2, f"--config={tmp_path / 'bad.py'} could not be loaded (its get_config() "
                    f"returned {type(eval(returned)).__name__}, not a ConfigDict)")


@pytest.mark.slow
def test_a_dangling_symlink_as_workdir_is_one_line(tmp_path):
  (tmp_path / "w").symlink_to(tmp_path / "nowhere")
  for script, args in (("train.py", [GOOD_DATA]),
                       ("evaluate.py", [GOOD_DATA, f"--params={tmp_path / 'p.msgpack'}"])):
    if script == "evaluate.py":
      save_params(tmp_path / "p.msgpack", create_train_state(jax.random.key(0)).params, Config())
    _one_line(run_script(script, f"--workdir={tmp_path / 'w'}", *args), 2,
              "is a symbolic link to")


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--batch_sizes="], "--batch_sizes is empty"),
    (["--batch_size=0"], "--batch_size(s), --num_images, --epochs and --gemm_size must be positive"),
])
def test_benchmark_refuses_empty_or_zero_batch_sizes(args, message):
  _one_line(run_script("benchmark.py", *args), 2, message)


@pytest.mark.slow
@pytest.mark.parametrize("edit", [
    {"config": []}, {"replicas": [], "seeds": []}])
def test_results_table_names_a_hand_edited_metrics_file(tmp_path, trained_workdir, edit):
  metrics = json.loads((trained_workdir / "metrics.json").read_text())
  (tmp_path / "metrics.json").write_text(json.dumps({**metrics, **edit}))
  _one_line(run_script("results_table.py", f"--workdirs={tmp_path}"), 2,
            f"{tmp_path / 'metrics.json'} lacks what a finished run writes")


@pytest.mark.slow
def test_results_table_refuses_numbers_no_run_records_and_keeps_its_cells(tmp_path,
                                                                         trained_workdir):
  """Before: a NaN PSNR was printed as a result, and a '|' in a device name split its row."""
  metrics = json.loads((trained_workdir / "metrics.json").read_text())
  metrics["final"]["psnr_standard_mean"] = float("nan")
  (tmp_path / "metrics.json").write_text(json.dumps(metrics))
  _one_line(run_script("results_table.py", f"--workdirs={tmp_path}"), 2,
            "holds final/psnr_standard_mean = nan, which no finished run records")
  metrics = json.loads((trained_workdir / "metrics.json").read_text())
  metrics.update(platform="gpu", device="H200 | 141 GB")
  (tmp_path / "metrics.json").write_text(json.dumps(metrics))
  run = run_script("results_table.py", f"--workdirs={tmp_path}")
  assert run.returncode == 0, run.stderr
  header, _, row = run.stdout.strip().splitlines()
  assert "H200 \\| 141 GB" in row
  assert row.replace("\\|", "").count("|") == header.count("|")


@pytest.mark.slow
def test_a_config_file_that_exits_while_it_loads_is_one_line(tmp_path):
  """Before: SystemExit(0) in a --config file ended train.py with exit 0 and no word."""
  (tmp_path / "exits.py").write_text("raise SystemExit(0)\n")
  run = run_script("train.py", f"--config={tmp_path / 'exits.py'}", f"--workdir={tmp_path / 'w'}",
                   GOOD_DATA)
  _one_line(run, 2, f"--config={tmp_path / 'exits.py'} could not be loaded (SystemExit")
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_export_to_an_existing_directory_leaves_no_temporary(tmp_path, trained_workdir):
  (tmp_path / "out").mkdir()
  _one_line(run_script("export_params.py", f"--workdir={trained_workdir}",
                       f"--output={tmp_path / 'out'}"), 2, "is a directory; name a file")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_while_the_data_loads_leaves_no_new_workdir(tmp_path):
  data_dir = shared_data_dir()
  # The data load sends the Ctrl-C itself: the moment is the same in every run.
  wrapper = (
      "import os, runpy, signal, sys, time\n"
      "from jaxae.run import scripts\n"
      "def load_data(*args, **kwargs):\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(30)\n"
      "scripts.load_data = load_data\n"
      f"sys.argv = ['train.py', '--workdir={tmp_path / 'new'}', '--data_dir={data_dir}']\n"
      f"runpy.run_path({str(REPO / 'experiments' / 'train.py')!r}, run_name='__main__')\n")
  run = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
  _one_line(run, 130, "interrupted")
  assert not (tmp_path / "new").exists()


# The scripts as users run them, end to end.


def _losses(metrics):
  return [(h["epoch"], h["train_loss"], h["test_loss"]) for h in metrics["history"]]


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
      "limit": ([good_data, "--train_limit=-5"], "--train_limit=-5 must be 0"),
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


@pytest.mark.parametrize("script", ["evaluate.py", "export_params.py"])
def test_a_workdir_without_a_run_is_one_line(tmp_path, script):
  (tmp_path / "a_file").write_text("")
  for workdir, message in ((tmp_path, "holds no checkpoint; train first"),
                           (tmp_path / "a_file", "is not a directory; name a training run's"),
                           (tmp_path / "nowhere", "does not exist; name a training run's")):
    _one_line(run_script(script, f"--workdir={workdir}"), 2, f"{workdir} {message}")
  assert not (tmp_path / "nowhere").exists()


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
                   "--gemm_size=128", f"--output={out}", *TASK_FLAGS[task], *seeds)
  assert run.returncode == 0, run.stderr
  records = [json.loads(line) for line in out.read_text().splitlines()]
  metrics = {r["metric"] for r in records}
  assert {"compile_s", "train_images_per_s", "eval_images_per_s", "metrics_s"} <= metrics
  train = next(r for r in records if r["metric"] == "train_images_per_s")
  assert train["batch_size"] == 32 and train["value"] > 0 and train["device"]
  assert train["cpu"] and train["cpu"] == provenance.host()["cpu"]
  assert train["task"] == task
  # The machine's GEMM peaks, and the fraction of the float32 one that training reaches.
  peaks = {r["dtype"]: r["value"] for r in records if r["metric"] == "gemm_peak_gflops"}
  assert set(peaks) == {"float32", "bfloat16"} and min(peaks.values()) > 0
  assert train["fraction_of_f32_peak"] == pytest.approx(train["gflops"] / peaks["float32"],
                                                        abs=0.002)
  if seeds:  # Beside the single-seed figure: 2 replicas as one program, and the time ratio.
    many = next(r for r in records if r["metric"] == "replica_images_per_s")
    ratio = next(r for r in records if r["metric"] == "seeds_time_ratio")
    assert many["num_seeds"] == 2 and many["value"] > 0 and ratio["value"] > 0


@pytest.mark.slow
def test_export_refuses_to_replace_a_file_it_did_not_write(tmp_path, trained_workdir):
  shutil.copytree(trained_workdir, tmp_path / "w")
  (tmp_path / "w" / "params.msgpack").write_text("notes\n")
  _one_line(run_script("export_params.py", f"--workdir={tmp_path / 'w'}"), 2,
            "params.msgpack exists and is not a params file jaxae wrote")
  assert (tmp_path / "w" / "params.msgpack").read_text() == "notes\n"


@pytest.mark.slow
def test_export_of_a_continued_run_keeps_the_finished_runs_params(tmp_path, trained_workdir):
  """A finished run continued and killed leaves a checkpoint newer than its metrics.json (here:
  the finished run's metrics.json says one epoch fewer than the newest checkpoint)."""
  shutil.copytree(trained_workdir, tmp_path / "w")
  metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
  metrics["config"]["epochs"] = 3
  (tmp_path / "w" / "metrics.json").write_text(json.dumps(metrics))
  before = (tmp_path / "w" / "params.msgpack").read_bytes()
  _one_line(run_script("export_params.py", f"--workdir={tmp_path / 'w'}"), 2,
            "belongs to the run that finished after epoch 3 (its metrics.json), and the newest "
            "checkpoint is of epoch 1: pass --output=<file>")
  assert (tmp_path / "w" / "params.msgpack").read_bytes() == before
  run = run_script("export_params.py", f"--workdir={tmp_path / 'w'}",
                   f"--output={tmp_path / 'epoch1.msgpack'}")
  assert run.returncode == 0, run.stderr
  _, config = load_params(tmp_path / "epoch1.msgpack")
  assert config.epochs == 1  # The checkpoint's, not the stale metrics.json's 3.


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["head", "/dev/full"])
def test_standard_output_that_goes_away_is_one_line_and_keeps_the_checkpoints(tmp_path, reader):
  """Before: `| head -2` gave a BrokenPipeError traceback, `> /dev/full` an OSError one."""
  data_dir = shared_data_dir()
  train = [sys.executable, str(REPO / "experiments" / "train.py"), f"--data_dir={data_dir}",
           f"--workdir={tmp_path / 'w'}", "--train_limit=64", "--test_limit=16",
           "--config.features=(4,)", "--config.epochs=2", "--log_every_steps=0"]
  if reader == "head":
    command = " ".join(map(shlex.quote, train)) + " | head -1; exit ${PIPESTATUS[0]}"
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
  else:
    with open("/dev/full", "w") as full:
      run = subprocess.run(train, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
                           cwd=REPO)
  _one_line(run, 1, "error: cannot write to the standard output (")
  assert "what completed is kept" in run.stderr
  assert run.stderr.count("\n") == 1  # Nothing more at exit either.


@pytest.mark.parametrize("args,exit_code,stderr", [
    # benchmark.py printed its lines itself: `| head` gave a BrokenPipeError traceback.
    (["benchmark.py", "--num_images=32", "--epochs=1", "--batch_sizes=32", "--gemm_size=32"], 1,
     "error: cannot write to the standard output (Broken pipe); what completed is kept"),
    # absl prints the help while the flags parse, before the script's main.
    (["train.py", "--help"], 0, ""),
    (["train.py", "--help", ">/dev/full"], 1,
     "error: cannot write to the standard output (No space left on device)"),
], ids=["benchmark", "help", "help_full_disk"])
def test_every_script_whose_output_goes_away_ends_in_one_line(args, exit_code, stderr):
  script = [sys.executable, str(REPO / "experiments" / args[0]), *args[1:]]
  if script[-1] == ">/dev/full":
    command = " ".join(map(shlex.quote, script[:-1])) + " >/dev/full"
  else:
    command = " ".join(map(shlex.quote, script)) + " | head -0; exit ${PIPESTATUS[0]}"
  run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
  assert run.returncode == exit_code, run.stderr[-2000:]
  assert run.stderr.startswith(stderr) and run.stderr.count("\n") == (1 if stderr else 0), \
      run.stderr[-2000:]


def test_scripts_keep_compiled_programs_in_a_folder_per_machine(tmp_path, monkeypatch):
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  from jaxae.run import scripts  # pylint: disable=g-import-not-at-top
  users = jax.config.jax_compilation_cache_dir  # conftest's, as a user's own would be
  assert users and scripts.use_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir == users  # Left as it is.
  monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path))
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()  # Read the folder again at the next compilation.
    folder = scripts.use_compilation_cache()
    assert folder.parent == tmp_path / "xla" and jax.config.jax_compilation_cache_dir == str(folder)
    jax.jit(lambda x: x * 3 + 1).lower(jax.numpy.ones(7)).compile()
    assert any(folder.iterdir())  # The program is kept there.
    # Another CPU (or feature set): another folder.
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setattr(scripts, "host", lambda: {"cpu": "another", "cpus": 2,
                                                   "cpu_features": ["avx2"]})
    assert scripts.use_compilation_cache() not in (None, folder)
  finally:
    jax.config.update("jax_compilation_cache_dir", users)
    compilation_cache.reset_cache()
