"""Runs data-parallel training in a subprocess for tests/test_parallel.py; prints one JSON line.

    python tests/parallel_worker.py devices WORKDIR PART
        (with XLA_FLAGS=--xla_force_host_platform_device_count=4) the same runs on a mesh of one
        device and on a mesh of all four. PART "runs": a training run, a long epoch and where
        the batch of the four-device step lives; PART "variants": separation on a U-Net,
        three replicas, and a batch the devices do not divide. (Two parts, two tests: pytest's
        workers run them side by side.)
    python tests/parallel_worker.py process WORKDIR COORDINATOR NUM_PROCESSES PROCESS_ID
        one process of a multi-process run (jax.distributed over gloo).
"""

import functools
import json
import pathlib
import sys

import numpy as np

from conftest import tiny_splits  # This file's folder, tests/, is on sys.path.

TRAIN, TEST, BATCH = 40, 12, 8
# These runs test the data parallelism, not the model: one level of 4 channels compiles in a
# third of the default model's time, and every layer still runs on the sharded batch.
FEATURES = (4,)


def splits():
  """The same small splits in every process (and in the test that compares with them)."""
  return tiny_splits(TRAIN, TEST)


def config(batch_size=BATCH, epochs=2):
  from jaxae import Config  # pylint: disable=g-import-not-at-top
  return Config(epochs=epochs, batch_size=batch_size, features=FEATURES)


def history(metrics):
  return [[h["train_loss"], h["test_loss"]] for h in metrics["history"]]


def devices(workdir, part):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxae import parallel  # pylint: disable=g-import-not-at-top

  out = {"num_devices": jax.device_count()}
  meshes = (("one", parallel.data_mesh(jax.devices()[:1])), ("four", parallel.data_mesh()))
  {"runs": _runs, "variants": _variants}[part](workdir, meshes, out)
  print(json.dumps(out))


def _runs(workdir, meshes, out):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxae import loop, parallel  # pylint: disable=g-import-not-at-top
  from jaxae.run.train_and_evaluate import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from jaxae.steps import create_train_state  # pylint: disable=g-import-not-at-top

  train, test = splits()
  for name, mesh in meshes:
    run = train_and_evaluate(config(), train, test, f"{workdir}/{name}", log=lambda _: None,
                             mesh=mesh)
    out[f"history_{name}"] = history(run)
    out[f"ssim_{name}"] = run["final"]["ssim_standard_mean"]

  # A long epoch (200 steps): an unbounded queue of per-step programs once deadlocked XLA:CPU's
  # collectives; the epoch is one program now, with 200 all-reduces inside its loop.
  long = jax.numpy.tile(train.images, (20, 1, 1, 1))
  _, step_losses = loop.train_epoch(create_train_state(jax.random.key(0), config()), long, 1,
                                    seed=0, batch_size=4, mesh=parallel.data_mesh())
  out["long_epoch_losses"] = np.asarray(step_losses).tolist()

  # Where the four-device epoch puts each batch: the gathered images' per-device shape in the
  # compiled program.
  mesh = parallel.data_mesh()
  state = parallel.replicate(create_train_state(jax.random.key(0), config()), mesh)
  images = parallel.replicate(train.images, mesh)
  epoch = functools.partial(loop.train_epoch, seed=0, batch_size=BATCH, mesh=mesh)
  hlo = jax.jit(epoch).lower(state, images, 1).compile().as_text()
  out["gathers"] = [line.split("=")[1].split("gather(")[0].strip()
                    for line in hlo.splitlines() if " gather(" in line]
  out["has_all_reduce"] = "all-reduce(" in hlo
  out["params_spec"] = str(state.params["enc0"]["kernel"].sharding.spec)


def _variants(workdir, meshes, out):
  import jax  # pylint: disable=g-import-not-at-top
  from jaxae import loop  # pylint: disable=g-import-not-at-top
  from jaxae.run.train_and_evaluate import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from jaxae.steps import create_train_state  # pylint: disable=g-import-not-at-top

  train, test = splits()
  quiet = lambda _: None
  # The separation task (a dict of examples per batch) on a U-Net, batch 6 padded to 8.
  separate = config(batch_size=6, epochs=1).replace(task="separate", model="unet",
                                                    features=(4, 8), conv_impl="gemm_vjp")
  # Three replicas (jaxae/seeds.py), a number the four devices do not divide.
  three = config(epochs=1).replace(num_seeds=3)
  for name, mesh in meshes:
    run = train_and_evaluate(separate, train, test, f"{workdir}/separate_{name}", log=quiet,
                             mesh=mesh)
    out[f"separate_{name}"] = history(run) + [[run["final"]["digit_psnr_mean"],
                                               run["final"]["photo_ssim_mean"]]]
    run = train_and_evaluate(three, train, test, f"{workdir}/seeds_{name}", log=quiet, mesh=mesh)
    out[f"seeds_{name}"] = [[h["train_loss"], h["test_loss"]] for r in run["replicas"]
                            for h in r["history"]]
    # Batch 6, which four devices do not divide: padded to 8 with masked examples.
    _, step_losses = loop.train_epoch(create_train_state(jax.random.key(0), config()),
                                      train.images, 1, seed=0, batch_size=6, mesh=mesh)
    out[f"batch6_{name}"] = np.asarray(step_losses).tolist()


def process(workdir, coordinator, num_processes, process_id, epochs="2", unlucky=""):
  """With `unlucky` = a process id: that process alone reads other bytes of the newest step."""
  from jaxae import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize(coordinator, int(num_processes), int(process_id), timeout_s=120)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxae.run import checkpoints  # pylint: disable=g-import-not-at-top
  from jaxae.run.train_and_evaluate import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from jaxae.run.errors import RunError  # pylint: disable=g-import-not-at-top

  if unlucky == process_id:
    read = checkpoints.Checkpointer._try_step  # pylint: disable=protected-access

    def transient_failure(self, step, *args):
      # Reads like every process (orbax's restore has collectives inside), then sees other bytes.
      result = read(self, step, *args)
      if step == max(self.steps()):
        # pylint: disable-next=protected-access
        return checkpoints._DAMAGED, "its contents do not match the checksum"
      return result

    checkpoints.Checkpointer._try_step = transient_failure  # pylint: disable=protected-access

  train, test = splits()
  lines = []
  try:
    # With progress, as train.py runs: every process runs the epoch program that reports steps.
    metrics = train_and_evaluate(config(epochs=int(epochs)), train, test, workdir,
                                 log=lines.append, progress=sys.stderr)
  except RunError as e:
    print(json.dumps({"process_index": jax.process_index(), "error": str(e)}))
    return
  print(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                    "num_devices": jax.device_count(),
                    "local_devices": jax.local_device_count(), "history": history(metrics),
                    "logged": lines, "ssim": metrics["final"]["ssim_standard_mean"]}))


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  {"devices": devices, "process": process}[sys.argv[1]](*sys.argv[2:])
