"""One options object: the defaults and checks of the shift, the CLI, the app and the API come from it."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields

import pytest

from latentshift.core.shift import ShiftOptions
from latentshift.errors import OptionsError
from latentshift.options import DEFAULTS, ExplainOptions, add_cli_arguments, from_cli_args, option_spec


def parse(*argv: str) -> ExplainOptions:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return from_cli_args(parser.parse_args(list(argv)))


def test_the_shift_takes_its_defaults_from_the_options():
    shared = {spec.name for spec in fields(ShiftOptions)} & {spec.name for spec in fields(ExplainOptions)}
    assert shared >= {"step_size", "frames", "direction", "pred_diff", "pixel_budget", "max_lambda", "heatmap",
                      "floor", "ceiling", "search", "frames_from", "lambda_range"}
    for name in shared:
        assert getattr(ShiftOptions(), name) == getattr(DEFAULTS, name), name
    changed = ExplainOptions(step_size=3, frames=5, direction="curtail", pred_diff=0.5, pixel_budget=0.2,
                             max_lambda=50.0, heatmap="max", floor=0.1, ceiling=0.9, search="ladder",
                             frames_from="reconstruction", lambda_range=(-4.0, 2.0))
    carried = ShiftOptions.from_explain(changed)
    assert {name: getattr(carried, name) for name in shared} == {name: getattr(changed, name) for name in shared}


def test_the_api_and_the_app_take_their_defaults_from_the_options():
    from latentshift.app import handlers

    signature = inspect.signature(handlers.explain)
    for name in ("direction", "frames", "step_size", "frame_duration_ms", "ig_steps"):
        assert signature.parameters[name].default == getattr(DEFAULTS, name), name
    low, high, _ = option_spec("frames")["ui"]
    assert low <= DEFAULTS.frames <= high


def test_cli_flags_keep_their_documented_names_and_defaults():
    assert parse() == DEFAULTS
    options = parse("--target", "Effusion", "--step-size", "5", "--range", "-100", "50", "--frames", "8",
                    "--direction", "curtail", "--heatmap", "mm", "--frame-ms", "80", "--maps", "gradcam",
                    "--ig-steps", "16", "--pixel-budget", "0.1")
    assert options == ExplainOptions(target="Effusion", step_size=5.0, lambda_range=(-100.0, 50.0), frames=8,
                                     direction="curtail", heatmap="mm", frame_duration_ms=80, maps=("gradcam",),
                                     ig_steps=16, pixel_budget=0.1)
    assert parse("--maps", "").maps == ()


@pytest.mark.parametrize("changes, fragment", [
    ({"frames": 1}, "frames must be between 2 and 100"),
    ({"step_size": 0}, "step size must be a positive number"),
    ({"direction": "sideways"}, "direction must be one of both, curtail, exaggerate"),
    ({"lambda_range": (10, 20)}, "λ min ≤ 0 ≤ λ max"),
    ({"maps": ("saliency",)}, "unknown map(s) saliency"),
    ({"ig_steps": 1000}, "ig steps must be between 2 and 512"),
    ({"pixel_budget": float("nan")}, "pixel budget must be a positive number"),
])
def test_a_bad_option_is_named_in_the_message(changes, fragment):
    with pytest.raises(OptionsError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ExplainOptions(**changes).validate()
