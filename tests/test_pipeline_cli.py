"""The pipeline and ``python -m latentshift explain`` end to end on tiny saved models."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentshift.cli import main
from latentshift.pipeline import ExplainOptions, Pipeline, STAGES
from latentshift.io.render import gif_frame_count
from tiny_models import write_tiny_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_tiny_manifest(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def xray_png(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    pixels = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + 20 * (xx > 32)
    path = tmp_path / "xray.png"
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(path)
    return path


def explain(args, capsys):
    code = main(["explain", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_gif_whose_frame_count_matches_summary(manifest, xray_png, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = explain([xray_png, "--out", out, "--manifest", manifest, "--range", "-40", "25",
                                    "--frames", "7", "--ig-steps", "4", "--target", "effusion"], capsys)
    assert code == 0, stderr
    for name in ("latentshift.gif", "heatmap.png", "prediction.png", "summary.json", "gradcam.png",
                 "integrated_gradients.png", "counterfactual.png", "exaggerated.png", "input.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classifier"] == "tiny-classifier" and summary["target"] == "Effusion"
    assert len(summary["lambdas"]) == len(summary["preds"]) == 7 and 0.0 in summary["lambdas"]
    assert summary["lambdas"][0] == -40.0 and summary["lambdas"][-1] == 25.0
    assert summary["stop_reasons"] == {"curtail": "given_range", "exaggerate": "given_range"}
    assert summary["gif_frames"] == gif_frame_count(out / "latentshift.gif") == 2 * 7 - 2
    assert set(summary["seconds"]) >= {"predict", "gradcam", "latent_shift", "integrated_gradients"}
    assert "Effusion" in stdout


def test_cli_search_default_target_and_no_maps(manifest, xray_png, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = explain([xray_png, "--out", out, "--manifest", manifest, "--frames", "5",
                               "--maps", "", "--step-size", "0.5"], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    top = max(summary["predictions"], key=summary["predictions"].get)
    assert summary["target"] == top
    assert summary["initial_pred"] == pytest.approx(summary["predictions"][top], abs=1e-6)
    assert set(summary["stop_reasons"].values()) <= {"pred_diff", "floor", "ceiling", "not_moving",
                                                      "pixel_budget", "max_lambda"}
    assert not (out / "gradcam.png").exists()


@pytest.mark.parametrize("make_input, fragment", [
    (lambda p: p.write_text("hello, not an image"), "not"),
    (lambda p: p.write_bytes(b""), "empty"),
])
def test_cli_bad_image_exits_2_with_one_line(manifest, tmp_path, capsys, make_input, fragment):
    bad = tmp_path / "upload.png"
    make_input(bad)
    code, _, stderr = explain([bad, "--out", tmp_path / "out", "--manifest", manifest], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0].lower()


def test_cli_unknown_target_and_bad_range_exit_2(manifest, xray_png, tmp_path, capsys):
    code, _, stderr = explain([xray_png, "--out", tmp_path, "--manifest", manifest, "--target", "Fracture"], capsys)
    assert code == 2 and "Pneumonia, Effusion" in stderr
    code, _, stderr = explain([xray_png, "--out", tmp_path, "--manifest", manifest, "--range", "5", "9"], capsys)
    assert code == 2 and "λ range" in stderr


def test_cli_refuses_tampered_weights(tmp_path, xray_png, capsys):
    manifest = write_tiny_manifest(tmp_path)
    weights = tmp_path / "tiny-classifier.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, _, stderr = explain([xray_png, "--out", tmp_path / "out", "--manifest", manifest], capsys)
    assert code == 2 and "sha256" in stderr
    assert weights.exists(), "a refused file must not be deleted"


def test_pipeline_yields_stages_in_order_with_fast_results_first(manifest, xray_png, tmp_path):
    pipeline = Pipeline.get(manifest_path=str(manifest))
    image = pipeline.load_image(xray_png)
    seen = []
    for explanation in pipeline.iter_explain(image, ExplainOptions(frames=4, ig_steps=4), tmp_path):
        seen.append(explanation.stage)
        if explanation.stage == "predict":
            assert explanation.predictions and explanation.shift is None
        if explanation.stage == "gradcam":
            assert explanation.gradcam.shape == (32, 32) and "gif" not in explanation.files
    assert tuple(seen) == STAGES
    assert explanation.integrated_gradients.shape == (32, 32)
    assert explanation.reconstruction_error is not None
    again = Pipeline.get(manifest_path=str(manifest))
    assert again.classifier is pipeline.classifier and again.autoencoder is pipeline.autoencoder, \
        "models are loaded once (the model store)"


def test_module_entry_point_runs_as_a_subprocess():
    completed = subprocess.run([sys.executable, "-m", "latentshift", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "explain" in completed.stdout


def _all_parsers(parser: argparse.ArgumentParser, name: str = "latentshift"):
    """(name, parser) for ``parser`` and every sub-command below it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from _all_parsers(sub_parser, f"{name} {sub_name}")


def test_every_command_prints_its_help():
    # argparse %-formats help texts: a bare "%" in an option's help ("5 %") broke `explain --help`
    from latentshift import cli

    names = []
    for name, parser in _all_parsers(cli.build_parser()):
        assert "usage:" in parser.format_help(), name
        names.append(name)
    assert {"latentshift explain", "latentshift batch"} <= set(names)
    assert not {"latentshift bench", "latentshift train"} & set(names)  # research commands: latentshift_research
    from latentshift_research import cli as research_cli

    research = [name for name, parser in _all_parsers(research_cli.build_parser(), "python -m latentshift_research")
                if "usage:" in parser.format_help()]
    assert {"python -m latentshift_research bench", "python -m latentshift_research train"} <= set(research)


@pytest.mark.parametrize("frames_from", ["input", "reconstruction"])
def test_cli_frames_from_names_the_mode_and_the_zero_frame(manifest, xray_png, tmp_path, capsys, frames_from):
    out = tmp_path / frames_from
    code, _, stderr = explain([xray_png, "--out", out, "--manifest", manifest, "--range", "-40", "25",
                               "--frames", "5", "--maps", "", "--frames-from", frames_from], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["frames_from"] == summary["latent_shift"]["frames_from"] == frames_from
    zero = summary["lambdas"].index(0.0)
    if frames_from == "input":  # λ = 0 is the person's image, and its prediction the input's
        assert summary["preds"][zero] == pytest.approx(summary["initial_pred"], abs=1e-6)
        assert summary["latent_shift"]["reconstruction_pred"] is None
    else:
        assert summary["latent_shift"]["reconstruction_pred"] == pytest.approx(summary["preds"][zero])
    assert summary["latent_shift"]["counterfactual_lambdas"] == {"curtail": -40.0, "exaggerate": 25.0}
