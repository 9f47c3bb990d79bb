"""Config files and command-line overrides (experiments/configs/, jaxae.config.to_config_dict)."""

import dataclasses
import json

from absl import flags
from ml_collections import config_flags
import pytest

from conftest import REPO
from jaxae.config import (REMOVED_OPTIONS, Config, Normalization, from_config_dict,
                          to_config_dict, without_removed_options)

CONFIGS = REPO / "experiments" / "configs"
NAMED = sorted(p.stem for p in CONFIGS.glob("*.py"))


def _parse(*args, default=CONFIGS / "corrected.py"):
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", str(default), flag_values=values,
                                           lock_config=True, sys_argv=["prog", *args])
  values(["prog", *args])
  return from_config_dict(holder.value)


def test_every_run_of_results_has_its_named_config_or_a_removed_option():
  # A run of an option removed since (config.REMOVED_OPTIONS) keeps its results and weights; its
  # config file went with the option, and the commit named there runs it.
  results = sorted(p.name for p in (REPO / "results").iterdir()
                   if (p / "metrics.json").exists())
  for name in set(results) - set(NAMED):
    recorded = json.loads((REPO / "results" / name / "metrics.json").read_text())["config"]
    assert any(recorded.get(option, kept) != kept
               for option, (kept, _) in REMOVED_OPTIONS.items()), name


def test_a_removed_option_reads_at_its_kept_value_and_is_refused_at_another():
  for option, (kept, commit) in REMOVED_OPTIONS.items():
    assert Config.from_dict({option: kept}) == Config()
    with pytest.raises(ValueError, match=rf"^{option}='other' was removed .*git checkout {commit}"):
      Config.from_dict({option: "other"})
    with pytest.raises(ValueError, match=rf"^{option}='other' was removed"):
      from_config_dict({**Config().to_dict(), option: "other"})
    # A trained model's config (a params file): how it was trained is not the model.
    assert without_removed_options({option: "other", "seed": 3}, trained=True) == {"seed": 3}


# How the layers were computed is not part of what was run (all formulations compute the same
# function); "conv_transpose" is that setting's name in earlier versions.
_FORMULATION = ("conv_impl", "conv_transpose")


@pytest.mark.parametrize("name", NAMED)
def test_a_named_config_is_the_config_its_results_were_run_with(name):
  config = _parse(f"--config={CONFIGS / name}.py")
  metrics = REPO / "results" / name / "metrics.json"
  if not metrics.exists():
    pytest.skip(f"results/{name} has no metrics.json")
  recorded = without_removed_options(json.loads(metrics.read_text())["config"])
  ours = json.loads(json.dumps(config.to_dict()))
  for key in _FORMULATION:
    recorded.pop(key, None)
    ours.pop(key, None)
  # Fields added since a run keep their defaults in it (jaxae/run/workdir.py, _ADDED_SETTINGS).
  recorded = {**{k: v for k, v in ours.items() if k not in recorded}, **recorded}
  assert ours == recorded


def _other_value(field: dataclasses.Field):
  """A command-line value different from the default, per the field's type, and its parse."""
  default = field.default
  if isinstance(default, bool):
    return ("false" if default else "true"), (not default)
  if isinstance(default, int):
    return str(default + 3), default + 3
  if isinstance(default, float):
    return "0.25", 0.25
  if isinstance(default, tuple):
    return "(8,24)", (8, 24)
  choices = {"task": "separate", "separation": "project", "separation_loss": "mse",
             "model": "unet", "activation": "relu", "conv_impl": "gemm", "optimizer": "sgd",
             "lr_schedule": "cosine", "gemm_dtype": "bfloat16"}
  return choices[field.name], choices[field.name]


# Fields whose other value is valid only beside another field's.
@pytest.mark.parametrize("field", [f for f in dataclasses.fields(Config)
                                   if not isinstance(f.default, Normalization)],
                         ids=lambda f: f.name)
def test_every_field_is_settable_on_the_command_line(field):
  text, value = _other_value(field)
  config = _parse(f"--config.{field.name}={text}")
  assert getattr(config, field.name) == value
  assert config == Config().replace(**{field.name: value})


def test_nested_normalizations_are_settable_and_checked():
  config = _parse("--config=" + str(CONFIGS / "faithful.py"),
                  "--config.mnist_normalization.mean=(0.1,0.2,0.3)",
                  "--config.cifar_normalization.std=(1,1,1)")
  assert config.full_batch and config.mnist_normalization.mean == (0.1, 0.2, 0.3)
  assert config.cifar_normalization.std == (1.0, 1.0, 1.0)
  with pytest.raises(ValueError, match="^mnist_normalization: Normalization stds must be positive"):
    _parse("--config.mnist_normalization.std=(0,1,1)")


def test_config_dicts_round_trip_and_name_unknown_fields():
  config = Config(task="separate", features=(4, 8), weight_decay=0.5, num_seeds=3)
  assert from_config_dict(to_config_dict(config)) == config
  cfg = to_config_dict(config)
  cfg.unlock()
  cfg.epochz = 3
  with pytest.raises(ValueError, match="^epochz is not a Config field"):
    from_config_dict(cfg)


def test_config_validation_names_the_bad_field():
  for bad, message in [(dict(seed=2 ** 32), "seed must be an integer in 0..4294967295"),
                       (dict(seed=-1), "seed must be"), (dict(batch_size=0), "batch_size"),
                       (dict(features=(16, "a")), "features"),
                       (dict(full_batch="yes"), "full_batch"),
                       (dict(learning_rate=float("inf")), "learning_rate must be a positive "
                                                           "finite number, got inf"),
                       (dict(negative_slope=float("nan")), "negative_slope must be a finite"),
                       (dict(grad_clip_norm=float("inf")), "grad_clip_norm")]:
    with pytest.raises(ValueError, match=message):
      Config(**bad).validate()
  settings = Config().to_dict()
  settings.update(learning_rate="fast")
  with pytest.raises(ValueError,
                     match="learning_rate must be a positive finite number, got 'fast'"):
    Config.from_dict(settings)
  assert Config.from_dict(Config(seed=2 ** 32 - 1).to_dict()).seed == 2 ** 32 - 1


@pytest.mark.parametrize("mean, std, message", [
    ((0.5, 0.5, 0.5), (0.5, float("nan"), 0.5), "stds must be positive and finite"),
    ((0.5, 0.5, 0.5), (0.5, float("inf"), 0.5), "stds must be positive and finite"),
    ((0.5, float("nan"), 0.5), (0.5, 0.5, 0.5), "means must be finite"),
])
def test_a_normalization_refuses_values_that_are_not_finite(mean, std, message):
  """Before: a NaN std passed (NaN <= 0 is False) and a run's every loss was NaN."""
  with pytest.raises(ValueError, match=message):
    Normalization(mean=mean, std=std)
