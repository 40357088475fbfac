"""README's "Use your own model" example, run exactly as written, and the rules around user models:
a missing hash needs an explicit flag, a tampered file is refused, an unknown architecture is listed
as unavailable with its reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentshift.cli import main
from latentshift.weights import Manifest, model_status

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "latentshift"


def readme_blocks() -> list[tuple[str, str]]:
    """(kind, code) of every block marked ``<!-- own-model-example: KIND -->`` in README.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"<!-- own-model-example: (\w+) -->\n```\w+\n(.*?)```", readme, flags=re.S)


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own-model")
    (folder / "examples").symlink_to(REPO / "examples")
    return folder


def test_the_readme_example_runs_as_written(example_folder):
    blocks = readme_blocks()
    assert [kind for kind, _ in blocks] == ["python", "shell", "python"]
    python_code = "\n".join(code for kind, code in blocks if kind == "python")
    shell = next(code for kind, code in blocks if kind == "shell").strip()
    completed = subprocess.run([sys.executable, "-c", blocks[0][1]], cwd=example_folder, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    command = shell.split()
    if command[0] == "latentshift" and SCRIPT.exists():
        command[0] = str(SCRIPT)
    else:
        command = [sys.executable, "-m", "latentshift", *command[1:]]
    completed = subprocess.run(command, cwd=example_folder, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads((example_folder / "out" / "mine" / "summary.json").read_text())
    assert summary["target"] == "Opacity" and len(summary["preds"]) == 8
    completed = subprocess.run([sys.executable, "-c", python_code], cwd=example_folder, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "Opacity:" in completed.stdout and (example_folder / "out" / "mine-python" / "summary.json").is_file()


def test_a_file_without_hash_needs_the_flag_and_a_tampered_one_is_refused(example_folder, tmp_path, capsys):
    if not (example_folder / "my_classifier.pt2").exists():
        pytest.skip("needs the README example's files")
    card = json.loads((example_folder / "my_classifier.json").read_text())
    unhashed = tmp_path / "unhashed.json"
    unhashed.write_text(json.dumps({k: v for k, v in card.items() if k != "sha256"}))
    image = str(REPO / "examples" / "normal-IM-0225-0001.png")
    base = ["explain", image, "--classifier-file", str(example_folder / "my_classifier.pt2"), "--target", "Opacity",
            "--range", "-100", "100", "--frames", "4", "--maps", ""]
    assert main([*base, "--card", str(unhashed), "--out", str(tmp_path / "a")]) == 2
    assert "sha256" in capsys.readouterr().err
    assert main([*base, "--card", str(unhashed), "--allow-unverified", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert "unverified_weights" in [w["code"] for w in summary["warnings"]]
    tampered = tmp_path / "tampered.pt2"
    data = bytearray((example_folder / "my_classifier.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    command = ["explain", image, "--classifier-file", str(tampered), "--card", str(example_folder / "my_classifier.json"),
               "--target", "Opacity", "--out", str(tmp_path / "c")]
    assert main(command) == 2 and "failed verification" in capsys.readouterr().err


def test_an_unknown_architecture_is_unavailable_with_its_reason(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    shutil.copy(REPO / "latentshift" / "embedded" / "demo-pneumonia-classifier.safetensors", weights)
    manifest = tmp_path / "mine.json"
    manifest.write_text(json.dumps({"models": [{
        "id": "my-cnn", "kind": "classifier", "architecture": "tiny-cnn", "labels": ["Effusion"],
        "source": {"type": "file", "path": weights.name, "sha256": "0" * 64}}]}))
    entry = Manifest.for_user(manifest).get("my-cnn")
    status = model_status(entry)
    assert not status.available and "unknown architecture 'tiny-cnn'" in status.reason
    assert main(["weights", "--manifest", str(manifest), "list", "--no-network"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("my-cnn"))
    assert "unavailable" in line and "unknown architecture" in line
    assert "demo-pneumonia-classifier" in Manifest.for_user(manifest).entries, "merged over the built-in one"
