"""Privacy of uploads: not logged, not written into results, not sent anywhere, not kept.

Documented behaviour (docs/limits.md, "Privacy"):

* The pipeline and imaging never log a folder path of an upload. The one place an upload's
  **base name** appears at INFO is the refusal line of a bad image (imaging's messages
  name files by base name only, and the app logs the refusal it shows); a successful
  explanation logs no name at all at INFO or above.
* DICOM patient attributes (name, ID) are never copied into summary.json or the images.
* No analytics and no outbound connection: explaining an image opens no socket to any
  non-loopback address, in the CLI or in the app.
* Gradio's copies of uploads and outputs are deleted after the cache expiry
  (tests/test_load.py checks the bytes), and so are the app's own run folders, on a timer,
  without waiting for another request.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from pathlib import Path

import pytest

import badinputs
from appserver import FAST_EXPLAIN, app_committed, serve_app
from latentshift.cli import main
from tiny_models import write_tiny_manifest

CLI_FAST = ["--frames", "4", "--ig-steps", "4", "--range", "-40", "25", "--frame-ms", "50"]
SECRET_DIR = "ward7-secret-folder-91c2"
SECRET_NAME = "DOE_JANE_1957-03-02_7f3a"
needs_app = pytest.mark.skipif(not app_committed(), reason="app.py is not committed yet")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_tiny_manifest(tmp_path_factory.mktemp("models"))


def latentshift_logs(caplog, level=logging.INFO) -> str:
    return "\n".join(record.getMessage() for record in caplog.records
                     if record.levelno >= level and record.name.startswith("latentshift"))


def all_output_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def test_successful_explain_logs_no_upload_name_or_folder(manifest, tmp_path, caplog, capsys):
    folder = tmp_path / SECRET_DIR
    folder.mkdir()
    image = badinputs.good_png(folder / f"{SECRET_NAME}.png")
    caplog.set_level(logging.DEBUG, logger="latentshift")
    code = main(["explain", str(image), "--out", str(tmp_path / "out"), "--manifest", str(manifest), *CLI_FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    logs = latentshift_logs(caplog)
    assert SECRET_NAME not in logs and SECRET_DIR not in logs
    assert SECRET_DIR not in captured.out + captured.err
    assert SECRET_NAME.encode() not in all_output_bytes(tmp_path / "out")
    assert SECRET_DIR.encode() not in all_output_bytes(tmp_path / "out")


def test_refused_upload_is_logged_by_base_name_only(manifest, tmp_path, caplog, capsys):
    folder = tmp_path / SECRET_DIR
    folder.mkdir()
    bad = folder / f"{SECRET_NAME}.png"
    bad.write_text("not an image")
    caplog.set_level(logging.DEBUG, logger="latentshift")
    code = main(["explain", str(bad), "--out", str(tmp_path / "out"), "--manifest", str(manifest)])
    err = capsys.readouterr().err
    assert code == 2 and SECRET_NAME in err and SECRET_DIR not in err
    logs = latentshift_logs(caplog, logging.DEBUG)
    assert SECRET_DIR not in logs, "a folder path of an upload was logged"
    info_lines = [line for line in latentshift_logs(caplog).splitlines() if SECRET_NAME in line]
    assert all(line.startswith("image refused: ") for line in info_lines), info_lines


def test_dicom_patient_attributes_never_reach_the_results(manifest, tmp_path, caplog, capsys):
    patient = "ZZTOPSECRET^JANE"
    data = badinputs.dicom_bytes(pixels=badinputs.xray_like().astype("uint16") * 16, patient_name=patient)
    assert patient.encode() in data
    path = tmp_path / "study.dcm"
    path.write_bytes(data)
    caplog.set_level(logging.DEBUG, logger="latentshift")
    out = tmp_path / "out"
    assert main(["explain", str(path), "--out", str(out), "--manifest", str(manifest), *CLI_FAST]) == 0
    captured = capsys.readouterr()
    results = all_output_bytes(out)
    for secret in ("ZZTOPSECRET", "ID-ZZTOPSECRET"):
        assert secret.encode() not in results
        assert secret not in latentshift_logs(caplog, logging.DEBUG) + captured.out + captured.err


class OutboundGuard:
    """Records and refuses every connection or name lookup that is not loopback."""

    def __init__(self, monkeypatch):
        self.attempts: list[str] = []
        original_connect = socket.socket.connect
        original_connect_ex = socket.socket.connect_ex
        original_getaddrinfo = socket.getaddrinfo
        guard = self

        def is_loopback(host) -> bool:
            if host in (None, "", "localhost"):
                return True
            try:
                return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
            except ValueError:
                return False

        def check(address, what):
            if isinstance(address, tuple) and not is_loopback(address[0]):
                guard.attempts.append(f"{what} {address!r}")
                raise OSError(f"test forbids outbound {what} to {address!r}")

        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                check(address, "connect")
            return original_connect(sock, address)

        def connect_ex(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                check(address, "connect")
            return original_connect_ex(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            if not is_loopback(host if not isinstance(host, bytes) else host.decode()):
                guard.attempts.append(f"lookup {host!r}")
                raise socket.gaierror(f"test forbids looking up {host!r}")
            return original_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_guard_catches_an_outbound_connection(monkeypatch):
    guard = OutboundGuard(monkeypatch)
    with pytest.raises(OSError):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    with pytest.raises(OSError):
        socket.create_connection(("hub.example", 443), timeout=1)
    assert len(guard.attempts) == 2


def test_cli_explain_opens_no_outbound_connection(manifest, tmp_path, monkeypatch, capsys):
    guard = OutboundGuard(monkeypatch)
    image = badinputs.good_png(tmp_path / "xray.png")
    code = main(["explain", str(image), "--out", str(tmp_path / "out"), "--manifest", str(manifest), *CLI_FAST])
    assert code == 0, capsys.readouterr().err
    assert guard.attempts == []


@needs_app
def test_app_turns_analytics_off_and_keeps_no_run_history():
    from latentshift.app import server

    import latentshift.app

    source = Path(latentshift.app.__file__).read_text(encoding="utf-8")
    assert 'os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"' in source
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"

    class RecordingDemo:
        def launch(self, **options):
            return options

    options = server.launch(RecordingDemo())
    assert options["run_history"] is False and not options.get("share")


@needs_app
def test_app_serves_an_explanation_without_outbound_connections_and_forgets_the_upload(tmp_path, monkeypatch):
    """Upload a distinctively named image; no non-loopback socket; its cached copy expires."""
    from gradio_client import handle_file

    image = badinputs.good_png(tmp_path / f"{SECRET_NAME}.png")
    with serve_app(tmp_path / "app", delete_cache=(1, 2)) as served:
        guard = OutboundGuard(monkeypatch)
        served.demo.analytics_enabled is False or pytest.fail("analytics enabled on the demo")
        client = served.client()
        answer = client.predict(image=handle_file(str(image)), **FAST_EXPLAIN, api_name="/explain")
        assert Path(answer[0]).is_file()
        assert guard.attempts == [], guard.attempts
        monkeypatch.undo()

        def cached_copies():
            return [p for p in served.gradio_cache.rglob(f"*{SECRET_NAME}*") if p.is_file()]

        deadline = time.monotonic() + 15
        while cached_copies() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cached_copies() == [], "the uploaded file outlived the cache expiry"


@needs_app
def test_app_run_folders_expire_without_another_request(tmp_path):
    from gradio_client import handle_file

    image = badinputs.good_png(tmp_path / "xray.png")
    with serve_app(tmp_path / "app", delete_cache=(1, 2), run_folder_max_age_s=2) as served:
        client = served.client()
        client.predict(image=handle_file(str(image)), **FAST_EXPLAIN, api_name="/explain")
        root = served.app.run_folders().root
        assert list(root.glob("run-*/input.png")), "the run folder holds the pipeline's outputs"
        deadline = time.monotonic() + 8
        while list(root.glob("run-*/input.png")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not list(root.glob("run-*/input.png")), "run folders outlived their maximum age while idle"


def test_a_killed_servers_run_folders_go_at_the_next_start(tmp_path, monkeypatch):
    """A process killed with SIGKILL never runs its exit handler; the next RunFolders removes its root."""
    import signal
    import subprocess
    import sys
    import tempfile

    from latentshift.app import serving

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = ("import sys, time; from latentshift.app import serving; folders = serving.RunFolders(); "
            "(folders.new() / 'input.png').write_bytes(b'x' * 1000); print(folders.root, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(tmp_path)})
    killed_root = Path(child.stdout.readline().strip())
    assert killed_root.parent == tmp_path and list(killed_root.glob("run-*/input.png"))
    stranger = tmp_path / "latentshift-app-without-owner"   # not ours to judge: left alone
    stranger.mkdir()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert killed_root.exists(), "SIGKILL ran no clean-up"
    folders = serving.RunFolders()
    assert not killed_root.exists() and stranger.exists() and folders.root.exists()
    assert (folders.root / serving.OWNER_FILE).read_text() == str(os.getpid())
