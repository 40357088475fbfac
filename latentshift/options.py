"""The options of an explanation: the single source of their defaults, ranges and help.

:class:`ExplainOptions` holds every choice a person can make about one explanation.
Each field's metadata gives its help text, its valid range or choices, the command-line
flag and the range of the app's control, so the CLI flags (:func:`add_cli_arguments`),
the app's controls and API parameters, the benchmark and the core's ``ShiftOptions``
defaults are all built from here. This module imports nothing of the package but its
error type, so every layer may use it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from .errors import OptionsError

DIRECTIONS = ("both", "curtail", "exaggerate")
HEATMAP_MODES = ("int", "max", "mean", "mm")
MAP_NAMES = ("gradcam", "integrated_gradients")
SEARCH_MODES = ("bisect", "ladder")
FRAME_SOURCES = ("input", "reconstruction")

#: Why a direction's search stopped (keys of ``ShiftResult.stop_reasons``), in words for people;
#: the ``{names}`` are the search's own limits (fields of :class:`ExplainOptions`).
STOP_WORDS = {
    "pred_diff": "the prediction had moved by {pred_diff:.0%} of its range",
    "floor": "the prediction fell below {floor:g}",
    "ceiling": "the prediction rose above {ceiling:g}",
    "not_moving": "the prediction stopped moving that way",
    "pixel_budget": "the image had changed by {pixel_budget:.0%}",
    "max_lambda": "λ reached its limit ({max_lambda:g})",
    "given_range": "the λ range was given",
    "not_requested": "this direction was not requested",
}
#: The options a stop rule's words name.
STOP_LIMITS = ("pred_diff", "floor", "ceiling", "pixel_budget", "max_lambda")


def stop_words(reason: str, limits: dict[str, float]) -> str:
    """Why a direction stopped, in words, with the limits the search used (see :data:`STOP_WORDS`)."""
    return STOP_WORDS.get(reason, reason).format(**limits)


def _option(default: Any, help: str, *, flag: str | None = None, low: float | None = None,
            high: float | None = None, choices: tuple | None = None, ui: tuple | None = None,
            positive: bool = False) -> Any:
    """A dataclass field with its metadata (``ui`` = (min, max, step) of the app's slider)."""
    metadata = {"help": help, "flag": flag, "low": low, "high": high, "choices": choices, "ui": ui,
                "positive": positive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ExplainOptions:
    """What to explain and how; see :meth:`latentshift.core.LatentShift.attribute` for the algorithm.

    λ is the step along the latent gradient (dimensionless); pixel values are in [-1024, 1024].
    """

    target: str | None = _option(None, "finding to explain (default: the top prediction)", flag="--target")
    step_size: float = _option(10.0, "first λ step of the search (the ladder's first rung; bisect decodes "
                                     "there once to aim its first probe)",
                               flag="--step-size", positive=True, ui=(1, 100, 1))
    lambda_range: tuple[float, float] | None = _option(
        None, "fixed λ range (λ min ≤ 0 ≤ λ max; skips the search)", flag="--range")
    frames: int = _option(16, "sweep frames, λ = 0 included", flag="--frames", low=2, high=100, ui=(4, 32, 1))
    direction: str = _option("both", "curtail (λ < 0, the finding fades), exaggerate (λ > 0) or both",
                             flag="--direction", choices=DIRECTIONS)
    heatmap: str = _option("int", "where the frames change: int (consecutive frames), max, mean, mm",
                           flag="--heatmap", choices=HEATMAP_MODES)
    frame_duration_ms: int = _option(100, "GIF time per frame in ms", flag="--frame-ms", low=10, high=5000,
                                     ui=(40, 400, 10))
    maps: tuple[str, ...] = _option(MAP_NAMES, "attribution maps to add beside the GIF", flag="--maps")
    ig_steps: int = _option(16, "Integrated-Gradients steps (Gauss-Legendre), doubled while the convergence delta "
                            "exceeds the IG tolerance", flag="--ig-steps", low=2, high=512, ui=(4, 64, 4))
    ig_tolerance: float = _option(0.02, "IG tolerance: the largest |convergence delta| accepted, as a fraction of "
                                  "|logit(x) - logit(baseline)| (at least 1 logit); its steps are doubled at most "
                                  "twice to reach it; 0 keeps the steps fixed", flag="--ig-tolerance", low=0.0, high=1.0)
    pred_diff: float = _option(0.8, "stop a direction once the prediction moved this much", flag="--pred-diff",
                               low=0.0, high=1.0, positive=True)
    floor: float = _option(0.05, "stop curtailing once the prediction falls below this", flag="--floor",
                           low=0.0, high=1.0)
    ceiling: float = _option(0.95, "stop exaggerating once the prediction rises above this", flag="--ceiling",
                             low=0.0, high=1.0)
    pixel_budget: float = _option(0.05, "stop once the image changed by this fraction (0.05 = 5 %)",
                                  flag="--pixel-budget", low=0.0, high=1.0, positive=True)
    max_lambda: float = _option(3000.0, "largest |λ| the search tries", flag="--max-lambda", positive=True)
    search: str = _option("bisect", "how the λ range is searched: bisect (bracket the first λ where a rule "
                          "fires, then narrow it to 2 %; fewer evaluations) or ladder (the reference implementation's ladder, "
                          "its exact answer)", flag="--search", choices=SEARCH_MODES)
    frames_from: str = _option("input", "what the frames are built on: input (the X-ray itself plus only what the "
                               "shift changes, x + D(z + λ·g) − D(z); λ = 0 is the input) or reconstruction "
                               "(the paper's frames D(z + λ·g); λ = 0 is the autoencoder's reconstruction)",
                               flag="--frames-from", choices=FRAME_SOURCES)
    allow_non_xray: bool = _option(False, "explain an image that the domain check says is not a chest X-ray "
                                   "(by default such an image is held back: predicted, checked, not explained)",
                                   flag="--allow-non-xray")

    def validate(self) -> "ExplainOptions":
        """Raise :class:`OptionsError` naming the first bad option; return self."""
        for spec in fields(self):
            _check_field(spec, getattr(self, spec.name))
        if self.lambda_range is not None:
            low, high = (float(v) for v in self.lambda_range)
            if not (math.isfinite(low) and math.isfinite(high)) or not low <= 0 <= high or low == high:
                raise OptionsError(f"the λ range must have λ min ≤ 0 ≤ λ max and min < max, got ({low}, {high})")
        unknown = [m for m in self.maps if m not in MAP_NAMES]
        if unknown:
            raise OptionsError(f"unknown map(s) {', '.join(unknown)}; choose from {', '.join(MAP_NAMES)}")
        return self

    def replace(self, **changes) -> "ExplainOptions":
        """A copy with ``changes`` applied (validated)."""
        return replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists)."""
        return {spec.name: (list(v) if isinstance(v := getattr(self, spec.name), tuple) else v)
                for spec in fields(self)}


#: The defaults, as one object (read these rather than repeating a number anywhere).
DEFAULTS = ExplainOptions()


def option_spec(name: str) -> dict[str, Any]:
    """Metadata of field ``name`` plus its ``default`` (for UI controls and API docs)."""
    spec = next(f for f in fields(ExplainOptions) if f.name == name)
    default = spec.default if spec.default is not MISSING else spec.default_factory()
    return {**spec.metadata, "default": default}


def _check_field(spec, value) -> None:
    meta, label = spec.metadata, spec.name.replace("_", " ")
    if value is None or spec.name in ("lambda_range", "maps", "target"):
        return
    if isinstance(spec.default, bool):
        if not isinstance(value, bool):
            raise OptionsError(f"{label} must be true or false, not {value!r}")
        return
    if meta["choices"] and value not in meta["choices"]:
        raise OptionsError(f"{label} must be one of {', '.join(meta['choices'])}, not {value!r}")
    if meta["choices"]:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionsError(f"{label} must be a number, not {value!r}") from None
    if not math.isfinite(number) or (meta["positive"] and number <= 0):
        raise OptionsError(f"{label} must be a positive number, not {value}")
    if (meta["low"] is not None and number < meta["low"]) or (meta["high"] is not None and number > meta["high"]):
        raise OptionsError(f"{label} must be between {meta['low']:g} and {meta['high']:g}, not {value}")


# ---------------------------------------------------------------- command line

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option (``--target``, ``--step-size``, ``--range LO HI``, …)."""
    for spec in fields(ExplainOptions):
        meta, default = spec.metadata, option_spec(spec.name)["default"]
        shown = "" if default is None or isinstance(default, bool) else f" (default {','.join(default) if spec.name == 'maps' else default})"
        # argparse %-formats help texts: a literal "%" (as in "5 %") must be doubled
        kwargs: dict[str, Any] = {"dest": spec.name, "help": (meta["help"] + shown).replace("%", "%%"),
                                  "default": None}
        if spec.name == "lambda_range":
            kwargs.update(nargs=2, type=float, metavar=("LO", "HI"))
        elif isinstance(default, bool):
            kwargs.update(action="store_true")
        elif meta["choices"]:
            kwargs.update(choices=meta["choices"])
        elif spec.name in ("frames", "frame_duration_ms", "ig_steps"):
            kwargs.update(type=int)
        elif spec.name not in ("target", "maps"):
            kwargs.update(type=float)
        parser.add_argument(meta["flag"], **kwargs)


def from_cli_args(args: argparse.Namespace) -> ExplainOptions:
    """ExplainOptions from parsed flags (unset flags keep the defaults); validated."""
    values = {spec.name: getattr(args, spec.name) for spec in fields(ExplainOptions)
              if getattr(args, spec.name, None) is not None}
    if "lambda_range" in values:
        values["lambda_range"] = tuple(values["lambda_range"])
    if "maps" in values:
        values["maps"] = tuple(m.strip() for m in values["maps"].split(",") if m.strip())
    return ExplainOptions(**values).validate()
