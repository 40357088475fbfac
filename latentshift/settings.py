"""The process's settings from its environment: one object, read once at an entry point (bottom layer).

:data:`VARIABLES` is the one list of the environment variables latentshift reads (name, field of
:class:`Settings`, default, meaning; README's table is made from it). The entry points (the
command line, ``app.py``) call :meth:`Settings.from_environ` once, apply their flags with
:meth:`Settings.with_flags` and pass the object down: the manifest, the model store, the integrity
checks and the model placement take their values from it and read no environment themselves.
Code that builds them without a ``Settings`` gets ``Settings()``: the defaults below. The
pipeline's model store (``Pipeline.get``) is the public API that reads the environment when it is
given no settings (README, "Python API").

An empty value counts as unset; an on/off variable takes the words of :data:`TRUE_WORDS` and
:data:`FALSE_WORDS` in any case. It imports nothing of the package.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

#: The model store's bound when ``$LATENTSHIFT_MAX_MODELS`` is not set.
DEFAULT_MAX_MODELS = 6
#: Where the app keeps finished explanations, and for how many days.
RESULTS_DIR_DEFAULT = Path("~/.cache/latentshift/results")
RESULTS_DAYS_DEFAULT = 30.0
#: The values of an on/off variable (any case); any other value is refused, naming the variable.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _text(name: str, raw: str) -> str:
    return raw


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _whole_number(name: str, raw: str) -> int:
    try:
        return max(1, int(raw.strip()))
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None


def _switch(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"{name} must be on ({', '.join(TRUE_WORDS)}) or off ({', '.join(FALSE_WORDS)}), not {raw!r}")
    return word in TRUE_WORDS


def _days(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of days, not {raw!r}") from None


class Variable(NamedTuple):
    """One environment variable: its name, the :class:`Settings` field it sets, that field's default,
    one line for people, and how its text becomes the field's value (``parse(name, raw)``)."""

    name: str
    field: str
    default: Any
    meaning: str
    parse: Callable[[str, str], Any]


#: Every environment variable latentshift reads for itself, in README's order.
VARIABLES = (
    Variable("LATENTSHIFT_MANIFEST", "manifest", None,
             "a weights manifest used *instead of* the package's `weights_manifest.json`", _text),
    Variable("LATENTSHIFT_EXTRA_MANIFEST", "extra_manifest", None,
             "your own manifest merged *over* the package's (what `--manifest` sets)", _text),
    Variable("LATENTSHIFT_ALLOW_UNVERIFIED", "allow_unverified", False,
             "on (`1`, `true`, `yes`, `on`): weights of unknown sha256 may load, as plain tensors "
             "(what `--allow-unverified` sets)", _switch),
    Variable("LATENTSHIFT_MAX_MODELS", "max_models", DEFAULT_MAX_MODELS,
             "models the model store keeps in memory, least recently used dropped first (at least 1)",
             _whole_number),
    Variable("LATENTSHIFT_CHANNELS_LAST", "channels_last", True,
             "off (`0`, `false`, `no`, `off`) keeps models on the CPU contiguous instead of channels_last", _switch),
    Variable("LATENTSHIFT_NO_ALLOCATOR_TUNING", "allocator_tuning", True,
             "on (`1`, …) leaves glibc's allocator settings alone (see `latentshift/runtime.py`)",
             lambda name, raw: not _switch(name, raw)),
    Variable("LATENTSHIFT_RESULTS_DIR", "results_dir", RESULTS_DIR_DEFAULT,
             "where the app keeps finished explanations for their links (`--results-dir`)", _path),
    Variable("LATENTSHIFT_RESULTS_DAYS", "results_days", RESULTS_DAYS_DEFAULT,
             "days a stored result and its link are kept (`--results-days`)", _days),
    Variable("LATENTSHIFT_RESULTS_REPO", "results_repo", None,
             "a private Hugging Face dataset repo the result store is mirrored to (`--results-repo`)", _text),
    Variable("HF_TOKEN", "hf_token", None,
             "write token for that mirror (a Space secret); without it the store is local only", _text),
)
_BY_FIELD = {variable.field: variable for variable in VARIABLES}


def _default(name: str):
    return _BY_FIELD[name].default


@dataclass(frozen=True)
class Settings:
    """What the environment (and the command line's flags) say; one field per :data:`VARIABLES` entry,
    plus ``offline`` (``--offline``, which has no variable of ours). ``hf_token`` is left out of the repr."""

    manifest: str | None = _default("manifest")
    extra_manifest: str | None = _default("extra_manifest")
    allow_unverified: bool = _default("allow_unverified")
    max_models: int = _default("max_models")
    channels_last: bool = _default("channels_last")
    allocator_tuning: bool = _default("allocator_tuning")
    results_dir: Path = _default("results_dir")
    results_days: float = _default("results_days")
    results_repo: str | None = _default("results_repo")
    hf_token: str | None = field(default=_default("hf_token"), repr=False)
    offline: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """The settings ``environ`` gives; ValueError naming the variable and its value when one is malformed."""
        values = {}
        for variable in VARIABLES:
            raw = environ.get(variable.name)
            if raw is not None and raw.strip():
                values[variable.field] = variable.parse(variable.name, raw)
        return cls(**values)

    def with_flags(self, **flags) -> "Settings":
        """These settings with the command line's flags over them; a flag that is None was not given."""
        return self.replace(**{name: value for name, value in flags.items() if value is not None})

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes`` (TypeError for a field that does not exist)."""
        return dataclasses.replace(self, **changes)


def read_variable(field_name: str, environ: Mapping[str, str] = os.environ):
    """One field's value from ``environ`` alone (for code that runs before the settings are read,
    such as the allocator settings of :mod:`latentshift.runtime`)."""
    variable = _BY_FIELD[field_name]
    raw = environ.get(variable.name)
    return variable.parse(variable.name, raw) if raw is not None and raw.strip() else variable.default


def variable_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return _BY_FIELD[field_name].name


def _shown(variable: Variable) -> str:
    value = variable.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"{variable.field} {'on' if value else 'off'}"
    if isinstance(value, float) and value.is_integer():
        return f"`{value:g}`"
    return f"`{value}`"


def markdown_table() -> str:
    """README's table of :data:`VARIABLES` (variable, the setting when it is not set, meaning)."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{v.name}` | {_shown(v)} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(lines) + "\n"
