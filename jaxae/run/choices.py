"""The speed-only choices of a run, measured on the machine it runs on and cached there.

    choice, how = run_choices(config, mesh)   # how: "measured in 9.2 s; cached in ...", ...

jaxae/platforms.py gives each platform's starting point; what is fastest depends on the machine
(its cores, caches and vector units: one table tuned on one CPU ran at a third of another's
float32 peak), so a run times the candidates where it runs, as cuDNN and XLA's GPU autotuner do:
the convolution formulation, the training microbatch per device (or the full-batch chunk), the
evaluation batch and how replicas share a device. The choice is cached per machine (CPU model and
features, or device kind), model, batch and jaxae version in <cache>/choices.json, printed in the
run's start lines and recorded in its settings.json and metrics.json.

The formulation, the microbatch, the chunk and the replica strategy change the floating-point
order of training (and the evaluation batch may change the test loss's last bits), so a resumed
run reuses its recorded choices, and reproducing a run means passing its recorded ones
(`--config.conv_impl`, `--config.microbatch`, `--eval_batch_size`; docs/speed.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Callable

import jax
from jax.sharding import Mesh
import numpy as np

import jaxae
from jaxae import loop, parallel, platforms, seeds
from jaxae.config import Config
from jaxae.dataset import MixedSplit, mix
from jaxae.run.provenance import host
from jaxae.sources import default_cache_dir
from jaxae.tasks import task_from_config

CACHE_FILE = "choices.json"
# Candidates per platform; each is timed only where it differs from the others (a microbatch no
# smaller than a device's batch is the whole batch).
MICROBATCHES = (8, 16, 32, 64, 128, 256)
FULL_BATCH_CHUNKS = (8, 32, 128, 512, 2048)
EVAL_BATCHES = (8, 32, 100, 500, 2000)
EVAL_EXAMPLES = 1000  # Each evaluation candidate is timed on this many.
# The formulations timed per platform: on CPU XLA's convolutions trained 13-30x slower than the
# GEMMs wherever they were measured (docs/speed.md), and timing them costs more than a run saves.
FORMULATIONS = {"cpu": ("gemm_vjp",), "gpu": ("gemm_vjp", "reference"),
                "tpu": ("reference", "gemm_vjp")}
# A training candidate is timed over epochs of this many steps, the best of TIMED_ROUNDS.
TIMED_STEPS = 8
TIMED_ROUNDS = 3
# A candidate slower than this many times the best so far is not timed again.
GIVE_UP_RATIO = 3.0
# `_timed`'s start for candidates that are not sizes: time them all. (None cannot say so: it is
# a microbatch candidate, the whole batch.)
EVERY = object()


def measure_by_default() -> bool:
  """Whether runs measure their choices unless told (True; JAXAE_MEASURE_CHOICES=0: the
  platform's defaults, for test suites and other runs that must not depend on timings)."""
  return os.environ.get("JAXAE_MEASURE_CHOICES", "1") != "0"


def run_choices(config: Config, mesh: Mesh, *, eval_batch_size: int | None = None,
                recorded: dict[str, Any] | None = None, measure: bool = True,
                cache_dir: str | os.PathLike | None = None,
                log: Callable[[str], None] = lambda _: None
                ) -> tuple[platforms.PlatformChoices, str]:
  """(the choices a run of `config` on `mesh` uses, where they come from).

  The config's own values (`conv_impl` other than "auto", `microbatch` other than 0) and
  `eval_batch_size` are kept; the rest are `recorded` (a resumed run's, from its settings.json;
  {} for a run from before they were recorded: the platform's defaults), else measured (or
  cached) with `measure`, else the platform's defaults. Runs of several processes take the
  defaults: each process would measure its own. `log` hears that a measurement starts.

  One seed's choices are measured with one replica, so a run of N seeds trains each replica as
  the run of its one seed does; N replicas add the replica strategy, measured on its own.
  """
  base = platforms.choices(config, platforms.platform_of(mesh))
  fixed = _fixed(config, eval_batch_size)
  if recorded is not None:
    how = ("recorded by the run being resumed" if recorded else
           "the platform's defaults, as the run being resumed had them")
    return dataclasses.replace(base, **{**_known(recorded), **fixed}), how
  if not measure or jax.process_count() > 1:
    why = "not measured" if not measure else "several processes"
    return dataclasses.replace(base, **fixed), f"the platform's defaults ({why})"
  path = pathlib.Path(cache_dir or default_cache_dir()) / CACHE_FILE
  chosen = {**_known(dataclasses.asdict(base)), **fixed}
  parts = [(config.replace(num_seeds=1), _measure_one_seed)]
  if config.num_seeds > 1:
    parts.append((config, _measure_replicas))
  hows = []
  for part_config, measure_part in parts:
    key = cache_key(part_config, mesh)
    entry = _read_cache(path).get(key["id"])
    if entry is None:
      log("Measuring what runs fastest on this machine (once per machine, model and batch).")
      start = time.perf_counter()
      measured, timings = measure_part(part_config, mesh, chosen, fixed)
      entry = _write_cache(path, key, measured, timings, time.perf_counter() - start)
      hows.append(f"measured in {entry['measured_s']:.1f} s")
    else:
      hows.append(f"measured on {entry['when']}")
    chosen.update({**_known(entry["choices"]), **fixed})
  return dataclasses.replace(base, **chosen), f"{', '.join(hows)}; cached in {path}"


def _known(d: dict[str, Any]) -> dict[str, Any]:
  names = {f.name for f in dataclasses.fields(platforms.PlatformChoices)} - {"platform"}
  return {k: v for k, v in d.items() if k in names}


def _fixed(config: Config, eval_batch_size: int | None) -> dict[str, Any]:
  """The choices the caller fixed: the config's non-default values and the evaluation batch."""
  fixed: dict[str, Any] = {}
  if config.conv_impl != platforms.AUTO:
    fixed["conv_impl"] = config.conv_impl
  if config.microbatch:
    fixed["microbatch_per_device"] = config.microbatch
    fixed["full_batch_chunk"] = config.microbatch
  if eval_batch_size:
    fixed["eval_batch_size"] = eval_batch_size
  return fixed


# The config fields that shape the timed programs (the rest are numbers in them).
_SHAPING_FIELDS = ("task", "separation", "model", "features", "activation", "gemm_dtype",
                   "conv_impl", "optimizer", "batch_size", "full_batch", "microbatch",
                   "num_seeds")


def cache_key(config: Config, mesh: Mesh) -> dict[str, Any]:
  """What a measurement depends on: the machine, jaxae's and JAX's versions, and the programs
  (the config's shaping fields); "id" hashes the rest."""
  device = mesh.devices.flat[0]
  machine = {"device": device.device_kind, "devices": parallel.mesh_size(mesh)}
  if device.platform == "cpu":
    machine.update(host())
  shape = {k: v for k, v in config.to_dict().items() if k in _SHAPING_FIELDS}
  key = {"machine": machine, "versions": [jaxae.__version__, jax.__version__],
         "run": json.loads(json.dumps(shape))}
  key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return key


class _Timings:
  """Picks the fastest candidate of each choice, keeping every timed candidate's seconds."""

  def __init__(self):
    self.seconds: dict[str, dict[str, float]] = {}

  def fastest(self, name: str, candidates, make: Callable[[Any], Callable[[], Any]],
              start: Any = EVERY):
    best = _timed(candidates, make, start)
    self.seconds[name] = {str(c): round(t, 5) for c, t in best.items()}
    return min(best, key=best.get)


def _measure_one_seed(config: Config, mesh: Mesh, chosen: dict[str, Any],
                      fixed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Times each unfixed choice of one seed's run, one after another (each with those before it
  chosen): the formulation, the microbatch or full-batch chunk, the evaluation batch. Random
  mean images: the time does not depend on their values.

  Returns ({choice: the fastest}, {choice: {candidate: best seconds}}).
  """
  chosen, timings = dict(chosen), _Timings()
  width = parallel.padded_batch_size(config.batch_size, mesh)
  examples = _random_examples(config, max(width * TIMED_STEPS, EVAL_EXAMPLES), mesh)
  if "conv_impl" not in fixed:
    formulations = FORMULATIONS.get(platforms.platform_of(mesh), ("gemm_vjp", "reference"))
    chosen["conv_impl"] = timings.fastest("conv_impl", formulations, lambda impl:
                                          _trainer(config, mesh, examples, width,
                                                   {**chosen, "conv_impl": impl}))
  if config.full_batch and "full_batch_chunk" not in fixed:
    chosen["full_batch_chunk"] = timings.fastest(
        "full_batch_chunk", [c for c in FULL_BATCH_CHUNKS if c <= loop.batch_size_of(examples)],
        lambda c: _trainer(config, mesh, examples, width, {**chosen, "full_batch_chunk": c}),
        start=chosen["full_batch_chunk"])
  elif not config.full_batch and "microbatch_per_device" not in fixed:
    per_device = width // parallel.mesh_size(mesh)
    default = chosen["microbatch_per_device"]
    chosen["microbatch_per_device"] = timings.fastest(
        "microbatch_per_device", [m for m in MICROBATCHES if m < per_device] + [None],
        lambda m: _trainer(config, mesh, examples, width, {**chosen, "microbatch_per_device": m}),
        start=default if default is not None and default < per_device else None)
  if "eval_batch_size" not in fixed:
    state = seeds.replica(_states(config.replace(conv_impl=chosen["conv_impl"]), mesh), 0)
    part = jax.tree.map(lambda x: x[:EVAL_EXAMPLES], examples)
    chosen["eval_batch_size"] = timings.fastest("eval_batch_size", EVAL_BATCHES, lambda b:
                                                _evaluator(state, part, b, mesh),
                                                start=chosen["eval_batch_size"])
  return {k: chosen[k] for k in ("conv_impl", "microbatch_per_device", "full_batch_chunk",
                                 "eval_batch_size")}, timings.seconds


def _measure_replicas(config: Config, mesh: Mesh, chosen: dict[str, Any],
                      fixed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Times the replica strategies of `config.num_seeds` replicas with one seed's choices."""
  del fixed
  timings = _Timings()
  width = parallel.padded_batch_size(config.batch_size, mesh)
  examples = _random_examples(config, width * TIMED_STEPS, mesh)
  strategy = timings.fastest("replica_strategy", ("loop", "vmap"), lambda s: _trainer(
      config, mesh, examples, width, {**chosen, "replica_strategy": s}))
  return {"replica_strategy": strategy}, timings.seconds


def random_split(n: int) -> MixedSplit:
  """n mean images of random digits and photos, mixed as the real ones are: the same shapes, so
  the same speed (what timings train and evaluate on)."""
  rng = np.random.default_rng(0)
  return mix((rng.integers(0, 256, (n, 28, 28, 1), np.uint8), np.zeros(n, np.int64)),
             (rng.integers(0, 256, (n, 32, 32, 3), np.uint8), np.zeros(n, np.int64)))


def _random_examples(config: Config, n: int, mesh: Mesh):
  return parallel.replicate(task_from_config(config).examples(random_split(n)), mesh)


def _states(config: Config, mesh: Mesh):
  return parallel.replicate(seeds.create_train_states(config, steps_per_epoch=TIMED_STEPS), mesh)


def _trainer(config: Config, mesh: Mesh, examples, width: int,
             chosen: dict[str, Any]) -> Callable[[], Any]:
  """A function that trains one timed epoch (compiled on its first call) of every replica."""
  config = config.replace(conv_impl=chosen["conv_impl"])
  holder = {"state": _states(config, mesh)}
  # A minibatch epoch of TIMED_STEPS steps; the full-batch step over all the examples.
  n = loop.batch_size_of(examples) if config.full_batch else width * TIMED_STEPS
  part = jax.tree.map(lambda x: x[:n], examples)
  strategy = chosen["replica_strategy"]

  def run():
    if config.full_batch:
      holder["state"], loss = seeds.over_replicas(
          loop.full_batch_step, holder["state"], part, strategy=strategy,
          chunk_size=chosen["full_batch_chunk"], mesh=mesh)
    else:
      holder["state"], loss = seeds.over_replicas(
          loop.train_epoch, holder["state"], part, 1, seed=0, strategy=strategy,
          batch_size=config.batch_size, mesh=mesh,
          microbatch_per_device=chosen["microbatch_per_device"])
    return jax.block_until_ready(loss)
  return run


def _evaluator(state, examples, batch_size: int, mesh: Mesh) -> Callable[[], Any]:
  return lambda: jax.block_until_ready(loop.evaluate(state, examples, batch_size=batch_size,
                                                     with_predictions=True, mesh=mesh))


def _timed(candidates, make: Callable[[Any], Callable[[], Any]],
           start: Any = EVERY) -> dict[Any, float]:
  """{candidate: the best seconds of its function}, for the candidates timed.

  Each is compiled and run once, then timed TIMED_ROUNDS times in turn with the others (so that
  a machine's drift touches all alike); one far slower than the best so far is not timed again.
  A single candidate is not timed (0 s).

  With a `start` among them, the candidates are sizes in increasing order, and the search walks
  from it, as the time of a size falls to one best size and rises after it (cache misses on one
  side, per-call overhead on the other): `start` and its neighbours are timed, then, while the
  fastest is the last timed on its side, the next candidate beyond it (with the fastest again).
  Compiling costs far more than timing (seconds against a tenth of one on a 2-core CPU), so
  each candidate not compiled shortens the measurement. With `start=EVERY`, or a start that is
  not a candidate (a default above the largest size that fits), all are timed.
  """
  candidates = list(candidates)
  if len(candidates) == 1:
    return {candidates[0]: 0.0}
  runs: dict[Any, Callable[[], Any]] = {}
  best: dict[Any, float] = {}

  def compile_and_time(group):
    # One after another: XLA's compiler already keeps two cores busy (2.9 s of wall time, 5.3 s
    # of CPU time for the seed model's epoch), and candidates compiled side by side took as long.
    for c in group:
      if c not in runs:
        runs[c] = make(c)
        runs[c]()  # Compiles.
    for _ in range(TIMED_ROUNDS):
      for c in group:
        if c in best and best[c] > GIVE_UP_RATIO * min(best.values()):
          continue
        begin = time.perf_counter()
        runs[c]()
        best[c] = min(best.get(c, float("inf")), time.perf_counter() - begin)

  if start is EVERY or start not in candidates:
    compile_and_time(candidates)
    return best
  at = candidates.index(start)
  low, high = max(at - 1, 0), min(at + 1, len(candidates) - 1)
  compile_and_time(candidates[low:high + 1])
  while True:
    fastest = candidates.index(min(best, key=best.get))
    if fastest == low and low > 0:
      low -= 1
      compile_and_time([candidates[low], candidates[fastest]])
    elif fastest == high and high < len(candidates) - 1:
      high += 1
      compile_and_time([candidates[high], candidates[fastest]])
    else:
      return best


def _read_cache(path: pathlib.Path) -> dict[str, Any]:
  """The cache's entries; an unreadable or foreign file reads as empty (measured again)."""
  try:
    entries = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  return entries if isinstance(entries, dict) else {}


def _write_cache(path: pathlib.Path, key: dict[str, Any], chosen: dict[str, Any],
                 timings: dict[str, Any], seconds: float) -> dict[str, Any]:
  """Adds the measurement to the cache, atomically, and returns its entry; a cache that cannot
  be written only costs the next run another measurement."""
  entries = _read_cache(path)
  entry = entries[key["id"]] = {
      "choices": chosen, "timings_s": timings, "measured_s": round(seconds, 2),
      "when": time.strftime("%Y-%m-%d"), "key": {k: v for k, v in key.items() if k != "id"}}
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, path)
  except OSError:
    tmp.unlink(missing_ok=True)
  return entry
