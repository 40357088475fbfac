"""The installable package: a wheel carries the runtime only (the manifest, the embedded weights and
their cards; no research code), and the console script explains an image from a folder outside the checkout."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    (found,) = out.glob("latentshift-*.whl")
    return found


def test_the_wheel_carries_the_manifest_and_every_embedded_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        packaged = json.loads(archive.read("latentshift/weights_manifest.json"))
    top_level = json.loads((REPO / "weights_manifest.json").read_text(encoding="utf-8"))
    assert packaged == top_level, "the package's manifest is the top-level one"
    for entry in top_level["models"]:
        if entry["source"]["type"] == "file":
            assert entry["source"]["path"] in names, entry["id"]
            if entry.get("model_card"):
                assert entry["model_card"] in names, entry["id"]
    assert any(name.startswith("latentshift/app/examples/") and name.endswith(".png") for name in names)
    adult = {f"latentshift/app/examples/adult/{path.name}" for path in (REPO / "examples" / "adult").glob("*.png")}
    assert adult and adult <= names, "the adult examples ship too"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "latentshift = latentshift.cli:entry" in archive.read(entry_points).decode()


def test_the_wheel_ships_the_runtime_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"latentshift"}, sorted(tops)
    research = [n for n in names if n.split("/")[1:2] in (["training"], ["evaluation"], ["tools"])
                or "latentshift_research" in n or n.endswith(("cli/training.py", "cli/evaluation.py", "cli/tools.py"))]
    assert not research, research


def test_the_console_script_explains_an_example_from_another_folder(tmp_path):
    script = Path(sys.executable).parent / "latentshift"
    if not script.exists():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    example = sorted((REPO / "examples").glob("pneumonia-*.png"))[0]
    completed = subprocess.run([str(script), "explain", str(example), "--out", "out", "--frames", "4",
                                "--ig-steps", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["classifier"] == "demo-pneumonia-classifier" and len(summary["preds"]) == 4
