"""The Space's two dependency sets: requirements.txt (CPU Spaces, CI) and requirements-zerogpu.txt
(ZeroGPU), and the README's documented way to switch to the second."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    """Requirement name -> its specifier, comments and blank lines left out."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~ ]", line, maxsplit=1)[0].lower().replace("_", "-")
            found[name] = line[len(name):]
    return found


def test_the_zerogpu_set_differs_only_in_a_torch_zerogpu_accepts():
    cpu, zero = pins(REPO / "requirements.txt"), pins(REPO / "requirements-zerogpu.txt")
    assert set(cpu) == set(zero) and "spaces" in cpu
    assert {name for name in cpu if cpu[name] != zero[name]} == {"torch", "torchvision"}
    major, minor, _ = (int(part) for part in zero["torch"].removeprefix("==").split("."))
    assert (major, minor) in {(2, 8), (2, 9), (2, 10), (2, 11)}, "ZeroGPU accepts torch 2.8-2.11"
    assert zero["torchvision"] == f"==0.{minor + 15}.0", "the torchvision release of that torch"


def test_the_documented_switch_gives_a_zerogpu_space(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(\s*cp requirements-zerogpu\.txt requirements\.txt\n.*?)```", readme, re.S)
    commands = textwrap.dedent(block.group(1))
    for name in ("README.md", "requirements.txt", "requirements-zerogpu.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / "requirements.txt").read_text() == (REPO / "requirements-zerogpu.txt").read_text()
    before, after = readme.splitlines(), (tmp_path / "README.md").read_text(encoding="utf-8").splitlines()
    assert [(a, b) for a, b in zip(before, after) if a != b] == [('python_version: "3.11"', 'python_version: "3.10.13"')]
    card = yaml.safe_load((tmp_path / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert card["python_version"] == "3.10.13" and card["sdk_version"] == "6.31.0"
