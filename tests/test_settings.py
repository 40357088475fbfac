"""The settings object: the LATENTSHIFT_* variables parsed once, flags over them, and passed down to
the manifest, the model store, the integrity check and the placement without an environment read."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from latentshift.app import serving
from latentshift.cli import main
from latentshift.errors import ModelUnavailableError
from latentshift.pipeline import Pipeline
from latentshift.settings import VARIABLES, Settings, markdown_table, read_variable
from tiny_models import write_tiny_manifest

REPO = Path(__file__).resolve().parents[1]


def test_every_variable_parses_into_its_field():
    environ = {"LATENTSHIFT_MANIFEST": "/m.json", "LATENTSHIFT_EXTRA_MANIFEST": "mine.yaml",
               "LATENTSHIFT_ALLOW_UNVERIFIED": "Yes", "LATENTSHIFT_MAX_MODELS": " 3 ",
               "LATENTSHIFT_CHANNELS_LAST": "0", "LATENTSHIFT_NO_ALLOCATOR_TUNING": "1",
               "LATENTSHIFT_RESULTS_DIR": "/srv/results", "LATENTSHIFT_RESULTS_DAYS": "7.5",
               "LATENTSHIFT_RESULTS_REPO": "me/results", "HF_TOKEN": "hf_secret", "UNRELATED": "x"}
    assert Settings.from_environ(environ) == Settings(
        manifest="/m.json", extra_manifest="mine.yaml", allow_unverified=True, max_models=3, channels_last=False,
        allocator_tuning=False, results_dir=Path("/srv/results"), results_days=7.5, results_repo="me/results",
        hf_token="hf_secret")


def test_unset_and_empty_values_give_the_defaults_of_their_old_homes():
    assert Settings.from_environ({}) == Settings() == Settings.from_environ({v.name: " " for v in VARIABLES})
    defaults = Settings()
    assert (defaults.max_models, defaults.results_days, defaults.results_dir) == (
        6, 30.0, Path("~/.cache/latentshift/results"))
    assert serving.RESULTS_DIR_DEFAULT == defaults.results_dir and serving.RESULTS_DAYS_DEFAULT == defaults.results_days
    assert (defaults.manifest, defaults.extra_manifest, defaults.allow_unverified) == (None, None, False)
    assert defaults.channels_last and defaults.allocator_tuning and not defaults.offline
    for variable in VARIABLES:
        assert getattr(defaults, variable.field) == variable.default, variable.name


@pytest.mark.parametrize("name, raw, field, expected", [
    ("LATENTSHIFT_ALLOW_UNVERIFIED", "on", "allow_unverified", True),
    ("LATENTSHIFT_ALLOW_UNVERIFIED", "0", "allow_unverified", False),
    ("LATENTSHIFT_CHANNELS_LAST", "1", "channels_last", True),
    ("LATENTSHIFT_CHANNELS_LAST", "False", "channels_last", False),
    ("LATENTSHIFT_CHANNELS_LAST", " off ", "channels_last", False),
    ("LATENTSHIFT_NO_ALLOCATOR_TUNING", "yes", "allocator_tuning", False),
    ("LATENTSHIFT_NO_ALLOCATOR_TUNING", "0", "allocator_tuning", True),
    ("LATENTSHIFT_MAX_MODELS", "0", "max_models", 1),
])
def test_each_variable_reads_its_words(name, raw, field, expected):
    assert getattr(Settings.from_environ({name: raw}), field) == expected
    assert read_variable(field, {name: raw}) == expected


@pytest.mark.parametrize("name, raw", [("LATENTSHIFT_MAX_MODELS", "many"), ("LATENTSHIFT_MAX_MODELS", "2.5"),
                                       ("LATENTSHIFT_RESULTS_DAYS", "a month"), ("LATENTSHIFT_ALLOW_UNVERIFIED", "maybe"),
                                       ("LATENTSHIFT_CHANNELS_LAST", "yes please")])
def test_a_malformed_value_is_refused_naming_the_variable_and_the_value(name, raw):
    with pytest.raises(ValueError) as refused:
        Settings.from_environ({name: raw})
    assert name in str(refused.value) and repr(raw) in str(refused.value)


def test_the_token_stays_out_of_the_repr():
    settings = Settings.from_environ({"HF_TOKEN": "hf_verysecret", "LATENTSHIFT_RESULTS_REPO": "me/results"})
    assert settings.hf_token == "hf_verysecret"
    assert "hf_verysecret" not in repr(settings) and "hf_verysecret" not in str(settings)
    assert "me/results" in repr(settings)


def test_flags_go_over_the_environment():
    settings = Settings.from_environ({"LATENTSHIFT_MAX_MODELS": "4", "LATENTSHIFT_EXTRA_MANIFEST": "env.json"})
    flagged = settings.with_flags(max_models=2, extra_manifest=None, allow_unverified=None)
    assert (flagged.max_models, flagged.extra_manifest, flagged.allow_unverified) == (2, "env.json", False)
    assert settings.max_models == 4, "frozen: the flags make a copy"
    assert settings.replace(extra_manifest=None).extra_manifest is None
    with pytest.raises(TypeError):
        settings.with_flags(no_such_setting=1)


def test_the_app_command_line_puts_its_flags_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTSHIFT_RESULTS_DAYS", "9")
    monkeypatch.setenv("HF_TOKEN", "hf_token_of_the_space")
    monkeypatch.delenv("LATENTSHIFT_EXTRA_MANIFEST", raising=False)
    assert serving.parse_args([]).settings.results_days == 9.0
    manifest = write_tiny_manifest(tmp_path)
    command_line = serving.parse_args(["--results-days", "3", "--results-dir", str(tmp_path / "r"),
                                       "--manifest", str(manifest)])
    serving.prepare_environment(command_line)
    assert command_line.settings.extra_manifest == str(manifest.resolve())
    assert "LATENTSHIFT_EXTRA_MANIFEST" not in os.environ, "--manifest travels in the settings, not the environment"
    results = serving.ResultSettings.from_command_line(command_line)
    assert (results.retention_days, results.folder, results.token) == (3.0, tmp_path / "r", "hf_token_of_the_space")


def test_a_malformed_value_ends_a_command_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("LATENTSHIFT_MAX_MODELS", "many")
    assert main(["weights", "list", "--no-network"]) == 2
    assert capsys.readouterr().err.strip() == "error: LATENTSHIFT_MAX_MODELS must be a whole number, not 'many'"
    with pytest.raises(SystemExit):
        serving.parse_args([])
    assert "LATENTSHIFT_MAX_MODELS must be a whole number" in capsys.readouterr().err


class EnvironmentGuard(dict):
    """A stand-in for ``os.environ`` that fails a test when anything asks it for a LATENTSHIFT_ variable."""

    def _check(self, key):
        if isinstance(key, str) and key.startswith("LATENTSHIFT_"):
            raise AssertionError(f"{key} was read from the environment below the entry point")

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._check(key)
        return super().__contains__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)


@pytest.fixture()
def unverified_manifest(tmp_path):
    """The tiny manifest with the classifier's sha256 removed (it then loads only on opt-in)."""
    path = write_tiny_manifest(tmp_path)
    data = json.loads(path.read_text())
    data["models"][0]["source"]["sha256"] = None
    path.write_text(json.dumps(data))
    return path


def test_the_guard_catches_a_read():
    with pytest.raises(AssertionError, match="LATENTSHIFT_MAX_MODELS"):
        EnvironmentGuard().get("LATENTSHIFT_MAX_MODELS")


def test_settings_reach_store_integrity_check_and_placement_without_the_environment(unverified_manifest, monkeypatch):
    monkeypatch.setenv("LATENTSHIFT_MAX_MODELS", "5")  # what the guard would hide, were it read
    monkeypatch.setattr(os, "environ", EnvironmentGuard(os.environ))
    monkeypatch.setattr(Settings, "from_environ", classmethod(lambda cls, environ=None: pytest.fail("read again")))
    settings = Settings(manifest=str(unverified_manifest), max_models=1, allow_unverified=True, channels_last=False)
    store = Pipeline.store(settings=settings)
    assert store.max_models == 1 and store.allow_unverified and "tiny-classifier" in store.manifest.entries
    loaded = store.get("tiny-classifier", "classifier")
    assert loaded.warning and "WITHOUT hash verification" in loaded.warning
    weight = next(p for p in loaded.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    refusing = Pipeline.store(settings=settings.replace(allow_unverified=False))
    with pytest.raises(ModelUnavailableError, match="LATENTSHIFT_ALLOW_UNVERIFIED"):
        refusing.load("tiny-classifier", "classifier")


def test_the_pipeline_without_settings_follows_the_environment_or_its_configuration(unverified_manifest, monkeypatch):
    monkeypatch.setenv("LATENTSHIFT_MANIFEST", str(unverified_manifest))
    monkeypatch.setenv("LATENTSHIFT_MAX_MODELS", "2")
    store = Pipeline.store()
    assert store.max_models == 2 and "tiny-classifier" in store.manifest.entries
    try:
        Pipeline.configure(Settings(manifest=str(unverified_manifest), max_models=3))
        assert Pipeline.store().max_models == 3
    finally:
        Pipeline.configure(None)
    assert Pipeline.store().max_models == 2


def test_readme_table_is_the_one_that_variables_make():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README's table of environment variables differs from settings.VARIABLES"
    rows = [line for line in readme.splitlines() if re.match(r"\| `(LATENTSHIFT_\w+|HF_TOKEN)` \|", line)]
    assert len(rows) == len(VARIABLES), "README lists the variables in one table only"


def test_every_latentshift_variable_in_the_package_is_in_variables():
    named = set()
    for path in (REPO / "latentshift").rglob("*.py"):
        named |= set(re.findall(r"\bLATENTSHIFT_[A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8")))
    assert named <= {v.name for v in VARIABLES}, sorted(named - {v.name for v in VARIABLES})
