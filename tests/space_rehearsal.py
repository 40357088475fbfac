"""Space rehearsal: build and start the app the way a Hugging Face Space does, offline, and measure it.

``python tests/space_rehearsal.py [--report FILE]`` (from the repository root, with a Python that has
gradio_client; Playwright + /usr/bin/chromium are used when present):

1. a virtual environment from ``requirements.txt`` only (no ``pip install .``), kept in
   ``.rehearsal/venv-<hash>`` and rebuilt when requirements.txt or the Python version change;
2. stand-ins for torchxrayvision's published files, built with the torchxrayvision installed in that
   environment: each DenseNet of the README's ``preload_from_hub`` as a whole pickled model
   (``model.pt``, as published), and the ResNetAE-101 as a state dict (as its GitHub release asset);
3. a fake Hub on 127.0.0.1 serving them (``tests/fakehub.py``), and a Hub cache filled the way
   ``preload_from_hub`` fills it: ``hf_hub_download`` of each preload line into the default cache under
   a temporary HOME (``HF_HOME`` unset, as on a Space);
4. ``python app.py`` with the repository root as working directory and the Space's environment
   (``SPACE_ID``, ``SYSTEM=spaces``, the temporary HOME, ``HF_ENDPOINT`` at the fake Hub). The stand-ins
   are not the published files, so their sha256 and the autoencoder's URL (the fake Hub instead of
   GitHub) come in through ``LATENTSHIFT_EXTRA_MANIFEST``, the variable a Space would set; the ranking
   and everything else are the repository's own.

Checked and measured: the pair that answers is the paper's (the app's log and an explanation's
summary.json), an explanation through gradio_client, the page's line (in chromium), the time to the
first page, to the paper's pair answering and to the first explanation, and the app's peak resident
memory (VmHWM). Then again with an empty cache and no reachable Hub: the embedded pair answers and
the line says why. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
ADULT_EXAMPLE = REPO / "examples" / "adult" / "cardiomegaly-00003283_000.png"
PAPER_PAIR = ("densenet121-res224-all", "resnetae-101-elastic")
EMBEDDED_PAIR = ("demo-pneumonia-classifier", "demo-autoencoder")
AE_RELEASE = ("mlmed/torchxrayvision-releases", "nihpcrsnamimic_ch-resnet101-2-ae-test2-elastic-e250.pt")
CHROMIUM = Path("/usr/bin/chromium")
START_TIMEOUT_S = 300
SWITCH_TIMEOUT_S = 300


@dataclass
class RunReport:
    """One start of the Space: what answered and how long things took (seconds from the process start)."""

    name: str
    first_page_s: float | None = None
    serving_line_in_log: str = ""
    paper_pair_answering_s: float | None = None
    page_line: str | None = None
    first_explanation_s: float | None = None
    explanation_seconds: float | None = None
    explained_with: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    peak_rss_mib: float | None = None
    log_tail: str = ""


# ------------------------------------------------------------------------------ the Space's environment

def space_venv(work: Path) -> tuple[Path, float]:
    """The Space's virtual environment from requirements.txt only: (its python, seconds spent building it)."""
    key = hashlib.sha256((REPO / "requirements.txt").read_bytes() + sys.version.encode()).hexdigest()[:12]
    venv = work / f"venv-{key}"
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python, 0.0
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REPO / "requirements.txt")], check=True)
    (venv / ".complete").write_text("built from requirements.txt\n")
    return python, time.monotonic() - started


def front_matter_preloads() -> list[tuple[str, list[str], str]]:
    """(repo, files, commit) of each ``preload_from_hub`` line of the README's front matter."""
    block = (REPO / "README.md").read_text(encoding="utf-8").split("---\n")[1]
    lines = re.search(r"preload_from_hub:\n((?:  - .*\n)+)", block).group(1).splitlines()
    preloads = []
    for line in lines:
        repo, files, commit = line.strip()[2:].split()
        preloads.append((repo, files.split(","), commit))
    return preloads


MAKE_FILES = r"""
import sys, torch, torchxrayvision as xrv
torch.manual_seed(0)
torch.save(xrv.models.DenseNet(weights=None), sys.argv[1])          # a whole pickled model, as model.pt is
torch.save(xrv.autoencoders.ResNetAE101().state_dict(), sys.argv[2])  # a state dict, as the release asset is
"""


def hub_folder(python: Path, root: Path) -> dict[str, Path]:
    """The fake Hub's files (``root/<org>/<name>/<commit>/<file>``), made with the Space's torchxrayvision."""
    made = root.parent / "made"
    made.mkdir(parents=True, exist_ok=True)
    densenet, autoencoder = made / "model.pt", made / AE_RELEASE[1]
    subprocess.run([str(python), "-c", MAKE_FILES, str(densenet), str(autoencoder)], check=True)
    files = {}
    for repo, names, commit in front_matter_preloads():
        for name in names:
            target = root / repo / commit / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(densenet, target)
            files[repo] = target
    release = root / AE_RELEASE[0] / ("0" * 40) / AE_RELEASE[1]
    release.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(autoencoder, release)
    files["autoencoder"] = release
    return files


def rehearsal_manifest(files: dict[str, Path], hub_url: str, path: Path) -> Path:
    """Entries of the repository's manifest with the stand-ins' sha256/size (and the fake autoencoder URL)."""
    manifest = json.loads((REPO / "weights_manifest.json").read_text(encoding="utf-8"))
    entries = []
    for entry in manifest["models"]:
        source = entry["source"]
        if source["type"] == "hub" and source["repo_id"] in files:
            stand_in = files[source["repo_id"]]
        elif entry["id"] == PAPER_PAIR[1]:
            stand_in = files["autoencoder"]
            source = dict(source, url=f"{hub_url}/{AE_RELEASE[0]}/resolve/{'0' * 40}/{AE_RELEASE[1]}")
        else:
            continue
        data = stand_in.read_bytes()
        source = dict(source, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                      note="Space rehearsal stand-in built with the installed torchxrayvision")
        entries.append(dict(entry, source=source))
    path.write_text(json.dumps({"format_version": 1, "models": entries}, indent=2))
    return path


def space_environment(home: Path, hub_url: str, manifest: Path, port: int) -> dict[str, str]:
    """The environment of ``python app.py`` on a Space: its variables, a fresh HOME, nothing of ours."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(HOME=str(home), SPACE_ID="latentshift/rehearsal", SYSTEM="spaces", HF_ENDPOINT=hub_url,
               LATENTSHIFT_EXTRA_MANIFEST=str(manifest), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_SERVER_PORT=str(port), NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    return env


def preload_from_hub(python: Path, env: dict[str, str]) -> None:
    """Fill the default Hub cache under HOME as the Space build's ``preload_from_hub`` does."""
    script = ("import sys, huggingface_hub as h\n"
              "for line in sys.argv[1:]:\n"
              "    repo, files, commit = line.split()\n"
              "    for name in files.split(','):\n"
              "        print(h.hf_hub_download(repo, name, revision=commit))\n")
    lines = [f"{repo} {','.join(files)} {commit}" for repo, files, commit in front_matter_preloads()]
    subprocess.run([str(python), "-c", script, *lines], env=env, check=True, capture_output=True, timeout=300)


# ------------------------------------------------------------------------------ one start of the Space

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, process: subprocess.Popen, started: float) -> float:
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no page at {url} after {START_TIMEOUT_S} s")


def wait_for_log(log: Path, pattern: str, started: float, timeout: float) -> tuple[str, float]:
    """The first log line matching ``pattern`` and when it appeared (seconds since start)."""
    while time.monotonic() - started < timeout:
        for line in log.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                return line.split(": ", 1)[-1], time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"no log line matching {pattern!r} in {timeout} s:\n{log.read_text()[-3000:]}")


def page_line(url: str) -> str | None:
    """The page's serving line as chromium shows it (None without Playwright or chromium)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not CHROMIUM.exists():
        return None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            settled = "document.querySelector('#serving-line')?.innerText.trim().startsWith('Answering')"
            page.wait_for_function(settled, timeout=60_000)
            page.wait_for_timeout(1000)  # the page-load event sets the current line ...
            page.wait_for_function(settled, timeout=60_000)  # ... and its timer ("0.1s") is gone again
            return page.locator("#serving-line").inner_text().strip()
        finally:
            browser.close()


def explain(url: str, downloads: Path) -> tuple[float, dict]:
    """One /explain with every parameter at its default: (seconds, summary.json)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=str(downloads))
    started = time.monotonic()
    files = client.predict(handle_file(str(ADULT_EXAMPLE)), api_name="/explain")
    seconds = time.monotonic() - started
    return seconds, json.loads(Path(files[-1]).read_text(encoding="utf-8"))


def peak_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(match.group(1)) / 1024, 1) if match else None


def run_space(name: str, python: Path, env: dict[str, str], work: Path, expect_paper: bool) -> RunReport:
    """Start ``python app.py`` once, check it and measure it, stop it."""
    report = RunReport(name)
    log = work / f"{name}.log"
    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"
    started = time.monotonic()
    with open(log, "w") as output:
        process = subprocess.Popen([str(python), "app.py"], cwd=REPO, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        report.first_page_s = round(wait_for_page(url, process, started), 2)
        pattern = ("Answering with the Latent Shift paper's pair" if expect_paper
                   else r"Answering with the embedded demo pair .*unavailable here")
        report.serving_line_in_log, seconds = wait_for_log(log, pattern, started, SWITCH_TIMEOUT_S)
        report.paper_pair_answering_s = round(seconds, 2) if expect_paper else None
        report.page_line = page_line(url)
        seconds, summary = explain(url, work / f"{name}-downloads")
        report.explanation_seconds = round(seconds, 2)
        report.first_explanation_s = round(time.monotonic() - started, 2)
        report.explained_with = [summary["classifier"], summary["autoencoder"]]
        report.warnings = [w["code"] for w in summary.get("warnings", [])]
        report.peak_rss_mib = peak_rss_mib(process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        report.log_tail = log.read_text(errors="replace")[-4000:]
    return report


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def rehearse(work: Path) -> dict:
    """Both starts of the Space; the report as a dict."""
    work.mkdir(parents=True, exist_ok=True)
    python, venv_seconds = space_venv(work)
    session = Path(tempfile.mkdtemp(prefix="rehearsal-", dir=work))
    files = hub_folder(python, session / "hub")
    port_file = session / "hub-url"
    hub = subprocess.Popen([sys.executable, str(TESTS / "fakehub.py"), str(session / "hub"), "--port-file",
                            str(port_file)], start_new_session=True)
    try:
        while not port_file.is_file() or not port_file.read_text():
            time.sleep(0.1)
        hub_url = port_file.read_text()
        manifest = rehearsal_manifest(files, hub_url, session / "rehearsal-manifest.json")
        env = space_environment(session / "home", hub_url, manifest, free_port())
        preload_from_hub(python, env)
        paper = run_space("paper-pair", python, env, session, expect_paper=True)
    finally:
        os.killpg(hub.pid, signal.SIGTERM)
        hub.wait(timeout=30)
    offline = space_environment(session / "empty-home", closed_port_url(), manifest, free_port())
    fallback = run_space("no-hub", python, offline, session, expect_paper=False)
    shutil.rmtree(session / "hub", ignore_errors=True)
    return {"venv_build_s": round(venv_seconds, 1), "python": str(python), "runs": [asdict(paper), asdict(fallback)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / ".rehearsal", help="venv and run folders")
    parser.add_argument("--report", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args()
    report = rehearse(args.work)
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
