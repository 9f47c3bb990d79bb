"""A run's workdir under abuse: two runs at once, damage, refusals, --overwrite, provenance."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, flip_a_stored_bit, run_script, shared_data_dir, tiny_splits
from jaxae import Config
from jaxae.run import workdir
from jaxae.run.checkpoints import CheckpointSaveError, Checkpointer
from jaxae.run.errors import RunError
from jaxae.run.provenance import parse_cpuinfo
from jaxae.run.train_and_evaluate import train_and_evaluate

QUIET = lambda _: None


def tiny(**fields) -> Config:
  """The runs here test the workdir, not the model: one level of 4 channels compiles in a third
  of the default model's time."""
  return Config(features=(4,), **fields)


def _history(metrics):
  return [(h["epoch"], h["train_loss"], h["test_loss"]) for h in metrics["history"]]


@pytest.mark.slow
def test_a_second_run_in_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  train, test = tiny_splits()
  with workdir.hold(tmp_path / "w"):
    with pytest.raises(RunError, match=f"in use by process {os.getpid()} on .*training since"):
      train_and_evaluate(tiny(epochs=1, batch_size=16, learning_rate=2e-3), train, test,
                         tmp_path / "w", overwrite=True, log=QUIET)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [".jaxae.lock"]
  assert not (tmp_path / "w").exists()  # The holder made it and started no run: removed.
  # Released: the next run goes ahead.
  out = train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path / "w", log=QUIET)
  assert len(out["history"]) == 1


def test_the_lock_of_a_killed_process_is_released(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from jaxae.run import workdir\n"
       "with workdir.hold(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)",
       str(tmp_path / "w")], stdout=subprocess.PIPE, text=True, cwd=REPO,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(RunError, match=f"in use by process {holder.pid}"):
    with workdir.hold(tmp_path / "w"):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir.hold(tmp_path / "w"):  # The OS released it with the process.
    pass


@pytest.mark.slow
def test_refused_runs_write_nothing(tmp_path):
  train, test = tiny_splits()
  with pytest.raises(RunError, match="seed must be an integer in 0..4294967295"):
    train_and_evaluate(tiny(epochs=1, seed=2 ** 32), train, test, tmp_path / "new", log=QUIET)
  assert not (tmp_path / "new").exists()
  # A refused run in an existing workdir leaves every file as it was.
  train_and_evaluate(tiny(epochs=2, batch_size=16), train, test, tmp_path / "w", log=QUIET)
  def files():  # The lock file records its latest holder; everything else must stay as it was.
    return {p: p.read_bytes() for p in (tmp_path / "w").rglob("*")
            if p.is_file() and p.name != workdir.LOCK_FILE}

  before = files()
  with pytest.raises(RunError, match="different settings"):
    train_and_evaluate(tiny(epochs=2, batch_size=8), train, test, tmp_path / "w", log=QUIET)
  assert files() == before


@pytest.mark.slow
def test_fewer_epochs_than_completed_is_refused_and_metrics_stay_true(tmp_path):
  train, test = tiny_splits()
  train_and_evaluate(tiny(epochs=3, batch_size=16), train, test, tmp_path, log=QUIET)
  metrics = (tmp_path / "metrics.json").read_bytes()
  with pytest.raises(RunError, match="holds 3 completed epochs, more than --config.epochs=2"):
    train_and_evaluate(tiny(epochs=2, batch_size=16), train, test, tmp_path, log=QUIET)
  assert (tmp_path / "metrics.json").read_bytes() == metrics


@pytest.mark.slow
def test_overwrite_removes_only_what_jaxae_wrote(tmp_path):
  train, test = tiny_splits()
  first = train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path, log=QUIET)
  (tmp_path / "checkpoints" / "notes.txt").write_text("mine")
  (tmp_path / "checkpoints" / "my_folder").mkdir()
  (tmp_path / "plan.md").write_text("mine too")
  # Another seed: other settings (refused without overwrite) and the same compiled programs.
  out = train_and_evaluate(tiny(epochs=1, batch_size=16, seed=1), train, test, tmp_path,
                           overwrite=True, log=QUIET)
  assert out["config"]["seed"] == 1 and out["optimizer_steps"] == 3  # Trained anew.
  assert out["history"][0]["train_loss"] != first["history"][0]["train_loss"]
  assert (tmp_path / "checkpoints" / "notes.txt").read_text() == "mine"
  assert (tmp_path / "checkpoints" / "my_folder").is_dir()
  assert (tmp_path / "plan.md").read_text() == "mine too"


@pytest.mark.slow
def test_checkpoints_without_settings_are_refused(tmp_path):
  train, test = tiny_splits()
  train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path, log=QUIET)
  (tmp_path / "settings.json").unlink()
  with pytest.raises(RunError, match="holds checkpoints but no settings.json of jaxae.s"):
    train_and_evaluate(tiny(epochs=2, batch_size=8), train, test, tmp_path, log=QUIET)


@pytest.mark.slow
def test_bit_flip_in_the_newest_checkpoint_is_caught_and_the_run_heals(tmp_path):
  """The damaged step is moved aside, the run resumes from the step before, the epoch is
  trained and saved again, and the history is the uninterrupted one."""
  train, test = tiny_splits()
  config = tiny(epochs=3, batch_size=16)
  straight = train_and_evaluate(config, train, test, tmp_path / "straight", log=QUIET)
  train_and_evaluate(config.replace(epochs=2), train, test, tmp_path / "w", log=QUIET)
  flip_a_stored_bit(tmp_path / "w" / "checkpoints" / "2")
  warnings = []
  healed = train_and_evaluate(config, train, test, tmp_path / "w", log=QUIET,
                              warn=warnings.append)
  assert len(warnings) == 1 and "checksum" in warnings[0] and "resumed from epoch 1" in warnings[0]
  assert _history(healed) == _history(straight)
  assert (tmp_path / "w" / "damaged_checkpoints" / "2").is_dir()
  checkpointer = Checkpointer(tmp_path / "w" / "checkpoints")
  assert checkpointer.steps() == [1, 2, 3]
  checkpointer.close()


@pytest.mark.slow
def test_full_disk_while_saving_is_one_error_and_the_rerun_resumes(tmp_path, monkeypatch):
  train, test = tiny_splits()
  config = tiny(epochs=2, batch_size=16)
  straight = train_and_evaluate(config, train, test, tmp_path / "straight", log=QUIET)
  save = Checkpointer.save

  def save_then_fill_the_disk(self, epoch, *args, **kwargs):
    if epoch == 2:
      raise CheckpointSaveError(f"could not write the checkpoint of epoch {epoch} in "
                                f"{self.directory} (OSError: No space left on device)")
    return save(self, epoch, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, "save", save_then_fill_the_disk)
  with pytest.raises(RunError, match="epoch 2.*No space left.*run the same command again"):
    train_and_evaluate(config, train, test, tmp_path / "w", log=QUIET)
  monkeypatch.setattr(Checkpointer, "save", save)
  assert _history(train_and_evaluate(config, train, test, tmp_path / "w", log=QUIET)) == \
      _history(straight)


@pytest.mark.slow
def test_metrics_record_versions_and_a_resume_under_others_says_so(tmp_path, monkeypatch):
  train, test = tiny_splits()
  first = train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path, log=QUIET)
  versions = first["provenance"]
  for key in ("python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
              "tensorflow-datasets", "dm-pix", "numpy", "git_commit"):
    assert key in versions
  assert versions["jax"] and versions["numpy"]
  if (REPO / ".git").exists():  # A run from a checkout names its commit.
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert versions["git_commit"] == head
  assert json.loads((tmp_path / "metrics.json").read_text())["provenance"] == versions
  monkeypatch.setattr("jaxae.run.train_and_evaluate.provenance",
                      lambda: {**versions, "jax": "9.9.9"})
  warnings = []
  train_and_evaluate(tiny(epochs=2, batch_size=16), train, test, tmp_path, log=QUIET,
                     warn=warnings.append)
  assert warnings == [f"resuming under other versions than epoch 1 was trained with: "
                      f"jax {versions['jax']} -> 9.9.9."]


@pytest.mark.slow
def test_metrics_record_the_cpu_and_a_resume_on_another_says_so(tmp_path, monkeypatch):
  train, test = tiny_splits()
  first = train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path, log=QUIET)
  host = first["provenance"]["host"]
  assert host["cpu"] and host["cpus"] >= 1
  other = {"cpu": "Intel Xeon (family 6, model 143, stepping 8)", "cpus": 2,
           "cpu_features": ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]}
  monkeypatch.setattr("jaxae.run.train_and_evaluate.provenance",
                      lambda: {**first["provenance"], "host": other})
  warnings = []
  train_and_evaluate(tiny(epochs=2, batch_size=16), train, test, tmp_path, log=QUIET,
                     warn=warnings.append)
  assert len(warnings) == 1 and warnings[0].startswith(
      f"resuming on another CPU than epoch 1 was trained on ({host['cpu']}, {host['cpus']} CPUs")
  assert "-> Intel Xeon (family 6, model 143, stepping 8), 2 CPUs, avx2 fma avx512f" in warnings[0]
  assert warnings[0].endswith("epoch times before and after are not comparable.")
  # The same CPU again: no warning.
  warnings.clear()
  train_and_evaluate(tiny(epochs=3, batch_size=16), train, test, tmp_path, log=QUIET,
                     warn=warnings.append)
  assert warnings == []


def test_parse_cpuinfo_reads_the_first_processor():
  text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
          "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu sse avx2 fma avx512f\n\n"
          "processor\t: 1\nmodel name\t: Other\nflags\t\t: avx512_bf16\n")
  assert parse_cpuinfo(text) == ("AMD EPYC (family 25, model 1, stepping 1)",
                                 ["avx2", "fma", "avx512f"])
  assert parse_cpuinfo("model name\t: Some CPU\n") == ("Some CPU", None)
  assert parse_cpuinfo("") == (None, None)
  assert parse_cpuinfo("Processor\t: ARMv7\n") == (None, None)


def test_stale_cache_temporaries_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
  from jaxae import sources  # pylint: disable=g-import-not-at-top
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / f"mnist-test-abc.npz.{dead}.tmp"
  live = tmp_path / f"mnist-test-abc.npz.{os.getpid()}.tmp"
  old_style, new_old_style = tmp_path / "tmp1234.tmp", tmp_path / "tmp5678.tmp"
  for f in (stale, live, old_style, new_old_style):
    f.write_bytes(b"x" * 100)
  os.utime(old_style, (time.time() - 7200, time.time() - 7200))
  sources._remove_stale_temporaries(tmp_path)  # pylint: disable=protected-access
  assert not stale.exists() and not old_style.exists()
  assert live.exists() and new_old_style.exists()
  # A failed cache write (a full disk) leaves no temporary behind.
  monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
  # pylint: disable-next=protected-access
  sources._write_cache(tmp_path / "x-y-z.images.npy", np.zeros((1, 2), np.uint8), np.zeros(1))
  assert sorted(p.name for p in tmp_path.glob("x-y-z*")) == []


@pytest.mark.slow
def test_a_finished_run_without_settings_or_checkpoints_is_refused_not_overwritten(tmp_path):
  train, test = tiny_splits()
  train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path, log=QUIET)
  (tmp_path / "settings.json").unlink()
  for step in (tmp_path / "checkpoints").iterdir():
    shutil.rmtree(step)
  def files():  # The lock file records its latest holder; everything else must stay as it was.
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()
            if p.is_file() and p.name != workdir.LOCK_FILE}

  before = files()
  with pytest.raises(RunError, match=r"holds the results of a run \(metrics.json, params.msgpack, "
                                     r"loss_curve.png, reconstructions.png\) but no settings.json"):
    train_and_evaluate(tiny(epochs=1, batch_size=8, learning_rate=0.5), train, test, tmp_path,
                       log=QUIET)
  assert files() == before


def test_files_that_only_share_jaxaes_names_are_neither_removed_nor_written_over(tmp_path):
  train, test = tiny_splits()
  train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path, log=QUIET)
  for name in ("eval.json", "comparison.png"):  # jaxae's, then someone else's in their place.
    (tmp_path / name).unlink(missing_ok=True)
  (tmp_path / "eval.json").write_text('{"editor": "vim"}')
  (tmp_path / "comparison.png").write_bytes(b"\x89PNG\r\n\x1a\n someone's picture")
  with pytest.raises(RunError, match=r"comparison.png, eval.json in .*: not written by jaxae"):
    train_and_evaluate(tiny(epochs=1, batch_size=8), train, test, tmp_path, overwrite=True,
                       log=QUIET)
  assert (tmp_path / "eval.json").read_text() == '{"editor": "vim"}'
  assert (tmp_path / "comparison.png").read_bytes().endswith(b"someone's picture")
  assert workdir.jaxae_run_files(tmp_path) == ["settings.json", "metrics.json", "params.msgpack",
                                               "loss_curve.png", "reconstructions.png"]
  # A foreign settings.json in a fresh folder is not taken for a run's, nor written over.
  (tmp_path / "fresh").mkdir()
  (tmp_path / "fresh" / "settings.json").write_text('{"editor": "vim"}')
  with pytest.raises(RunError, match="settings.json in .*: not written by jaxae"):
    train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path / "fresh",
                       overwrite=True, log=QUIET)
  assert (tmp_path / "fresh" / "settings.json").read_text() == '{"editor": "vim"}'


@pytest.mark.slow
def test_a_scheduled_run_is_not_resumed_for_another_number_of_epochs(tmp_path):
  train, test = tiny_splits()
  config = tiny(epochs=2, batch_size=16, lr_schedule="cosine", learning_rate=3e-3)
  train_and_evaluate(config, train, test, tmp_path, log=QUIET)
  with pytest.raises(RunError, match=r"different settings \(epochs\); its learning rate follows "
                                     r"a cosine schedule over 2 epochs"):
    train_and_evaluate(config.replace(epochs=4), train, test, tmp_path, log=QUIET)
  # A constant rate may be continued for more epochs, as before.
  constant = tiny(epochs=1, batch_size=16)
  train_and_evaluate(constant, train, test, tmp_path / "c", log=QUIET)
  assert len(train_and_evaluate(constant.replace(epochs=2), train, test, tmp_path / "c",
                                log=QUIET)["history"]) == 2


def test_warmup_longer_than_the_run_is_refused(tmp_path):
  train, test = tiny_splits()  # 40 pairs: 3 steps of 16 per epoch.
  with pytest.raises(RunError, match=r"warmup_steps=6 is not smaller than the run's 6 optimizer "
                                     r"steps \(2 epochs of 3\)"):
    train_and_evaluate(tiny(epochs=2, batch_size=16, lr_schedule="cosine", warmup_steps=6),
                       train, test, tmp_path / "w", log=QUIET)
  assert not (tmp_path / "w").exists()


def test_a_dangling_symlink_as_workdir_is_a_run_error(tmp_path):
  (tmp_path / "w").symlink_to(tmp_path / "nowhere")
  train, test = tiny_splits()
  with pytest.raises(RunError, match="is a symbolic link to .*nowhere, which does not exist"):
    train_and_evaluate(tiny(epochs=1), train, test, tmp_path / "w", log=QUIET)


def test_train_script_end_to_end_on_a_tiny_slice_of_the_real_data(tmp_path):
  """train.py as a user runs it, then again for one more epoch (a resume): the fast tier's whole
  run (the slow tier's real-data test adds evaluate.py and export_params.py). 40 training and 12
  test pairs at batch 16 are the shapes of the library runs above: last in the last file, it
  finds their programs in the compilation cache."""
  data_dir = shared_data_dir()

  def train(epochs):
    return run_script("train.py", f"--data_dir={data_dir}", "--train_limit=40", "--test_limit=12",
                      "--config.batch_size=16", f"--config.epochs={epochs}",
                      "--config.features=(4,)", f"--workdir={tmp_path / 'run'}")

  run = train(1)
  assert run.returncode == 0, run.stderr
  assert "epoch   1/1" in run.stdout and "Final test loss" in run.stdout
  for name in ("loss_curve.png", "reconstructions.png", "params.msgpack", "settings.json"):
    assert (tmp_path / "run" / name).stat().st_size > 100
  again = train(2)
  assert again.returncode == 0, again.stderr
  assert "Resuming" in again.stdout and "epoch   2/2" in again.stdout
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["optimizer_steps"] == 6
  final = metrics["final"]
  assert final["num_test_images"] == 12 and 0 < final["ssim_standard_mean"] < 1


@pytest.mark.slow
def test_a_run_of_a_removed_option_is_refused_and_one_at_its_kept_value_resumes(tmp_path):
  train, test = tiny_splits()
  train_and_evaluate(tiny(epochs=1, batch_size=16), train, test, tmp_path, log=QUIET)
  settings_file = tmp_path / "settings.json"
  settings = json.loads(settings_file.read_text())
  # A run written before the option was removed recorded it, at its (then default) kept value.
  settings_file.write_text(json.dumps({**settings, "pairing": "fixed"}))
  resumed = train_and_evaluate(tiny(epochs=2, batch_size=16), train, test, tmp_path, log=QUIET)
  assert [h["epoch"] for h in resumed["history"]] == [1, 2]
  settings_file.write_text(json.dumps({**settings, "pairing": "shuffled"}))
  with pytest.raises(RunError, match=r"no longer can be resumed: pairing='shuffled' was removed"):
    train_and_evaluate(tiny(epochs=3, batch_size=16), train, test, tmp_path, log=QUIET)


@pytest.mark.parametrize("make, what", [
    (lambda lock, victim: lock.symlink_to(victim), "a symbolic link"),
    (lambda lock, victim: lock.mkdir(), "a directory"),
])
def test_a_lock_that_is_not_a_plain_file_is_refused_and_left_alone(tmp_path, make, what):
  """Before: a symbolic link's target was truncated and overwritten with the lock's JSON (the
  open followed it), and a directory was an IsADirectoryError traceback."""
  victim = tmp_path / "victim.txt"
  victim.write_text("someone's notes\n")
  (tmp_path / "w").mkdir()
  make(tmp_path / "w" / workdir.LOCK_FILE, victim)
  with pytest.raises(RunError, match=f"{workdir.LOCK_FILE} is {what}, not jaxae's lock file; "
                                     "move it away"):
    with workdir.hold(tmp_path / "w"):
      pass
  assert victim.read_text() == "someone's notes\n"
