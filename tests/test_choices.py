"""Speed-only choices measured where a run runs (jaxae/run/choices.py): what is timed, the cache,
what a config fixes, and a resumed run keeping its own."""

import json
import types

import numpy as np
import pytest

from conftest import run_script, shared_data_dir, tiny_splits
from jaxae import Config, parallel, platforms
from jaxae.run import choices
from jaxae.run.train_and_evaluate import train_and_evaluate

TINY = Config(features=(4,), batch_size=16)


def test_the_fastest_candidate_wins_and_a_far_slower_one_is_timed_once(monkeypatch):
  clock = {"now": 0.0}  # A clock that each candidate advances by its cost: no timing noise.
  monkeypatch.setattr(choices, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
  calls = {"slow": 0, "fast": 0, "middling": 0}
  costs = {"slow": 0.05, "fast": 0.002, "middling": 0.003}

  def make(name):
    def run():
      calls[name] += 1
      clock["now"] += costs[name]
    return run
  best = choices._timed(["slow", "fast", "middling"], make)  # pylint: disable=protected-access
  assert best == pytest.approx(costs)
  # Compiled (run once), then timed each round unless far slower than the best.
  assert calls == {"slow": 2, "fast": 1 + choices.TIMED_ROUNDS,
                   "middling": 1 + choices.TIMED_ROUNDS}
  assert choices._timed(["only"], make) == {"only": 0.0}  # pylint: disable=protected-access


@pytest.mark.parametrize("start, best_size, timed", [
    (100, 32, [8, 32, 100, 500]),       # Walks down past the start's neighbour.
    (100, 100, [32, 100, 500]),         # The start is the fastest: only its neighbours.
    (4000, 32, [8, 32, 100, 500, 2000]),  # A start that is not a candidate: every one.
    (8, 2000, [8, 32, 100, 500, 2000]),  # Walks up to the last.
    (choices.EVERY, 32, [8, 32, 100, 500, 2000]),  # Every candidate.
])
def test_sizes_are_searched_from_the_start_toward_the_fastest(monkeypatch, start, best_size,
                                                              timed):
  clock = {"now": 0.0}
  monkeypatch.setattr(choices, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
  compiled = []
  sizes = [8, 32, 100, 500, 2000]

  def make(size):
    compiled.append(size)
    def run():  # The time falls to best_size, then rises.
      clock["now"] += 1.0 + abs(np.log(size / best_size))
    return run
  best = choices._timed(sizes, make, start)  # pylint: disable=protected-access
  assert sorted(compiled) == timed and sorted(best) == timed  # Each compiled once.
  assert min(best, key=best.get) == best_size


@pytest.mark.slow
def test_a_measurement_is_cached_per_machine_model_and_batch(tmp_path):
  mesh = parallel.data_mesh()
  lines = []
  choice, how = choices.run_choices(TINY, mesh, cache_dir=tmp_path, log=lines.append)
  assert how.startswith("measured in ") and str(tmp_path) in how
  assert lines == ["Measuring what runs fastest on this machine (once per machine, model and "
                   "batch)."]
  cache = json.loads((tmp_path / choices.CACHE_FILE).read_text())
  (entry,) = cache.values()
  # Every unfixed choice was timed: the formulations, each microbatch below the batch and the
  # whole batch, the evaluation batches from the platform's default to the fastest and its
  # neighbours; the fastest of each is the choice.
  timings = entry["timings_s"]
  assert set(timings["microbatch_per_device"]) == {"8", "None"}
  sizes = [str(b) for b in choices.EVAL_BATCHES]
  timed = [sizes.index(b) for b in timings["eval_batch_size"]]
  fastest = sizes.index(str(choice.eval_batch_size))
  default = sizes.index(str(platforms.choices(TINY, "cpu").eval_batch_size))
  assert set(timed) == set(range(min(timed), max(timed) + 1))  # No gap between those timed.
  assert {default, fastest} <= set(timed)
  assert {max(fastest - 1, 0), min(fastest + 1, len(sizes) - 1)} <= set(timed)
  for name, seconds in timings.items():
    assert str(getattr(choice, name)) == min(seconds, key=seconds.get), name
  assert choice.conv_impl == "gemm_vjp"  # On CPU the GEMMs are not timed against XLA's.
  assert entry["key"]["machine"]["cpu"] and entry["key"]["run"]["batch_size"] == 16
  # The next run reads it; another batch size is another measurement.
  lines.clear()
  again, how = choices.run_choices(TINY, mesh, cache_dir=tmp_path, log=lines.append)
  assert again == choice and how.startswith("measured on ") and not lines
  choices.run_choices(TINY.replace(batch_size=8), mesh, cache_dir=tmp_path)
  assert len(json.loads((tmp_path / choices.CACHE_FILE).read_text())) == 2


@pytest.mark.slow
def test_what_the_config_fixes_is_not_measured_and_wins(tmp_path):
  mesh = parallel.data_mesh()
  config = TINY.replace(conv_impl="gemm", microbatch=4)
  choice, _ = choices.run_choices(config, mesh, cache_dir=tmp_path)
  assert (choice.conv_impl, choice.microbatch_per_device) == ("gemm", 4)
  (entry,) = json.loads((tmp_path / choices.CACHE_FILE).read_text()).values()
  assert set(entry["timings_s"]) == {"eval_batch_size"}  # The one choice left open.
  choice, how = choices.run_choices(config, mesh, cache_dir=tmp_path, eval_batch_size=6)
  assert choice.eval_batch_size == 6 and how.startswith("measured on ")


def test_on_an_accelerator_the_gemms_are_timed_against_xlas_convolutions(tmp_path, monkeypatch):
  monkeypatch.setattr(platforms, "platform_of", lambda mesh: "gpu")  # Run on CPU all the same.
  choice, _ = choices.run_choices(TINY.replace(microbatch=16), parallel.data_mesh(),
                                  cache_dir=tmp_path, eval_batch_size=8)
  (entry,) = json.loads((tmp_path / choices.CACHE_FILE).read_text()).values()
  seconds = entry["timings_s"]["conv_impl"]
  assert set(seconds) == {"gemm_vjp", "reference"}
  assert choice.conv_impl == min(seconds, key=seconds.get)


@pytest.mark.slow
def test_replicas_add_the_strategy_and_keep_one_seeds_choices(tmp_path):
  mesh = parallel.data_mesh()
  one, _ = choices.run_choices(TINY, mesh, cache_dir=tmp_path)
  three, how = choices.run_choices(TINY.replace(num_seeds=3), mesh, cache_dir=tmp_path)
  assert how.startswith("measured on ") and ", measured in " in how  # One seed's from the cache.
  assert (three.conv_impl, three.microbatch_per_device, three.eval_batch_size) == (
      one.conv_impl, one.microbatch_per_device, one.eval_batch_size)
  entries = json.loads((tmp_path / choices.CACHE_FILE).read_text())
  assert {"loop", "vmap"} == set(next(e for e in entries.values()
                                      if "replica_strategy" in e["timings_s"])
                                 ["timings_s"]["replica_strategy"])
  assert three.replica_strategy in ("loop", "vmap")


def test_an_unreadable_cache_is_measured_again_and_rewritten(tmp_path):
  (tmp_path / choices.CACHE_FILE).write_text("{not json")
  _, how = choices.run_choices(TINY, parallel.data_mesh(), cache_dir=tmp_path)
  assert how.startswith("measured in ")
  assert len(json.loads((tmp_path / choices.CACHE_FILE).read_text())) == 1
  assert not list(tmp_path.glob("*.tmp"))


def test_without_measuring_the_platforms_defaults_and_a_record_as_it_is(tmp_path):
  mesh = parallel.data_mesh()
  choice, how = choices.run_choices(TINY, mesh, cache_dir=tmp_path, measure=False)
  assert (choice.microbatch_per_device, choice.eval_batch_size) == (64, 100)
  assert how == "the platform's defaults (not measured)"
  recorded = {"conv_impl": "reference", "microbatch_per_device": 2, "eval_batch_size": 3,
              "full_batch_chunk": 5, "replica_strategy": "loop"}
  choice, how = choices.run_choices(TINY, mesh, cache_dir=tmp_path, recorded=recorded)
  assert (choice.conv_impl, choice.microbatch_per_device, choice.eval_batch_size,
          choice.full_batch_chunk) == ("reference", 2, 3, 5)
  assert how == "recorded by the run being resumed"
  # A run from before the choices were recorded ran the platform's defaults of its day.
  choice, _ = choices.run_choices(TINY, mesh, cache_dir=tmp_path, recorded={})
  assert choice.microbatch_per_device == 64
  assert not (tmp_path / choices.CACHE_FILE).exists()


@pytest.mark.slow
def test_a_run_records_its_choices_and_a_resumed_run_keeps_them(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXAE_CACHE_DIR", str(tmp_path / "cache"))
  train, test = tiny_splits(n_train=32, n_test=8)
  lines = []
  first = train_and_evaluate(TINY.replace(epochs=1), train, test, tmp_path / "run",
                             measure_choices=True, log=lines.append)
  settings = json.loads((tmp_path / "run" / "settings.json").read_text())
  assert settings["platform_choices"] == first["platform_choices"]
  assert any(line.startswith("On cpu: ") and "measured in " in line for line in lines)
  # Another machine's cache (or a later measurement) says otherwise; the run keeps its own.
  cache = tmp_path / "cache" / choices.CACHE_FILE
  entries = json.loads(cache.read_text())
  for entry in entries.values():
    entry["choices"]["eval_batch_size"] = 7
  cache.write_text(json.dumps(entries))
  lines.clear()
  resumed = train_and_evaluate(TINY.replace(epochs=2), train, test, tmp_path / "run",
                               measure_choices=True, log=lines.append)
  assert resumed["platform_choices"] == first["platform_choices"]
  assert any("recorded by the run being resumed" in line for line in lines)
  fresh = train_and_evaluate(TINY.replace(epochs=1), train, test, tmp_path / "other",
                             measure_choices=True, log=lambda _: None)
  assert fresh["platform_choices"]["eval_batch_size"] == 7


@pytest.mark.slow
def test_train_py_prints_and_records_its_measured_choices(tmp_path):
  args = ("--data_dir", str(shared_data_dir()), "--workdir", str(tmp_path / "run"),
          "--train_limit=64", "--test_limit=16", "--config.features=(4,)",
          "--config.batch_size=16", "--config.epochs=1", "--log_every_steps=0")
  env = {"JAXAE_CACHE_DIR": str(tmp_path / "cache"), "JAXAE_MEASURE_CHOICES": "1"}
  done = run_script("train.py", *args, env=env)
  assert done.returncode == 0, done.stderr
  assert "Measuring what runs fastest on this machine" in done.stdout
  line = next(l for l in done.stdout.splitlines() if l.startswith("On cpu: "))
  assert "measured in " in line
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert f"evaluation batches of {metrics['platform_choices']['eval_batch_size']}" in line
  assert (tmp_path / "cache" / choices.CACHE_FILE).exists()
  # --nomeasure_choices: the platform's defaults, said so.
  done = run_script("train.py", *args[:3], str(tmp_path / "defaults"), *args[4:],
                    "--nomeasure_choices", env=env)
  assert done.returncode == 0, done.stderr
  assert "the platform's defaults (not measured)" in done.stdout
  assert np.isfinite(json.loads((tmp_path / "defaults" / "metrics.json").read_text())
                     ["final"]["test_loss"])
