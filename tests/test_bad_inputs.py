"""The bad-input corpus (tests/badinputs.py) through the CLI and through the app.

CLI (in-process ``latentshift.cli.main`` on tiny models): every case ends either in a
correct result (files written, sane summary.json, finite values) or in exit code 2 with
exactly one line on stderr naming the problem; no traceback; nothing written outside
``--out`` (the temporary folder is redirected and checked too).

App (launched in-process on 127.0.0.1, gradio_client): a bad upload ends in
``AppError`` carrying the imaging message, and the same server then still answers a
good request; an upload above ``max_file_size`` is refused with a clear message, by the
client before sending and by the server when a client does not check.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from PIL import Image

import badinputs
from appserver import FAST_EXPLAIN, app_committed, serve_app
from latentshift.cli import main
from latentshift.io.render import gif_frame_count
from tiny_models import write_tiny_manifest

REPO = Path(__file__).resolve().parents[1]
CASES = badinputs.corpus_cases()
CLI_FAST = ["--frames", "4", "--ig-steps", "4", "--range", "-40", "25", "--frame-ms", "50"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_tiny_manifest(tmp_path_factory.mktemp("models"))


def tree(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


def argument_for(case: badinputs.Case, corpus: Path, cwd: Path) -> str:
    """How a user would name the file: '../../etc/passwd.png' for the traversal case."""
    if case.name == "traversal_name":
        return "../../etc/passwd.png"
    return str(case.path(corpus))


def assert_sane_summary(out: Path, case: badinputs.Case) -> dict:
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["predictions"] and all(0.0 <= p <= 1.0 for p in summary["predictions"].values())
    numbers = [summary["initial_pred"], *summary["lambdas"], *summary["preds"], summary["reconstruction_error"]]
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers), numbers
    assert summary["gif_frames"] == gif_frame_count(out / "latentshift.gif") > 1
    notes = " | ".join(summary["input"]["notes"]).lower()
    assert case.note in notes, notes
    for name in ("input.png", "heatmap.png", "gradcam.png", "integrated_gradients.png", "prediction.png",
                 "counterfactual.png", "exaggerated.png"):
        with Image.open(out / name) as image:
            image.verify()
    return summary


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cli_gives_a_result_or_one_line(case, manifest, tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus"
    path = case.path(corpus)
    path.parent.mkdir(parents=True)
    path.write_bytes(badinputs.case_bytes(case))
    cwd = corpus / "w" / "x"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    before = tree(tmp_path)

    code = main(["explain", argument_for(case, corpus, cwd), "--out", str(out), "--manifest", str(manifest),
                 *CLI_FAST])
    captured = capsys.readouterr()

    assert "Traceback" not in captured.err + captured.out
    written = tree(tmp_path) - before
    assert all(out in p.parents or p == out for p in written), f"written outside --out: {written}"
    assert not any(scratch.iterdir()), "left files in the temporary folder"
    if case.expect == "ok":
        assert code == 0, captured.err
        assert_sane_summary(out, case)
    else:
        assert code == 2
        lines = captured.err.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: ") and case.fragment in lines[0].lower(), lines[0]
        assert str(tmp_path) not in lines[0] and "../" not in lines[0], "the message names the base name only"
        assert not out.exists() or not any(out.iterdir())


def test_real_cli_process_prints_exactly_one_line_for_a_bad_image(tmp_path):
    bad = tmp_path / "upload.png"
    bad.write_text("not an image")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO)!r}]
        from tiny_models import write_tiny_manifest
        manifest = write_tiny_manifest(Path({str(tmp_path)!r}))
        from latentshift.cli import main
        sys.exit(main(["explain", {str(bad)!r}, "--out", {str(tmp_path / 'out')!r}, "--manifest", str(manifest)]))
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                               cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "error: 'upload.png' is not an image (it looks like text), despite its '.png' name: expected PNG, "
        "JPEG, TIFF, GIF, BMP, WebP or DICOM"]


# ------------------------------------------------------------------------------------- app

APP_CASES = [case for case in CASES if case.via_app]
needs_app = pytest.mark.skipif(not app_committed(), reason="app.py is not committed yet")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not app_committed():
        pytest.skip("app.py is not committed yet")
    with serve_app(tmp_path_factory.mktemp("app")) as server:  # the app's own max_file_size
        yield server


@pytest.fixture(scope="module")
def client(served):
    return served.client()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    badinputs.write_corpus(folder)
    badinputs.good_png(folder / "good.png")
    return folder


def explain_via_app(client, path: Path):
    from gradio_client import handle_file

    return client.predict(image=handle_file(str(path)), **FAST_EXPLAIN, api_name="/explain")


@needs_app
def test_app_answers_every_case_and_keeps_serving(client, corpus):
    """One test over the corpus: the server is shared, so each answer also proves it survived."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    outcomes = {}
    for case in APP_CASES:
        path = case.path(corpus)
        if case.app_expect == "ok":
            result = explain_via_app(client, path)
            summary = json.loads(Path(result[-1]).read_text(encoding="utf-8"))
            assert gif_frame_count(result[0]) == summary["gif_frames"] > 1, case.name
            assert case.note in " | ".join(summary["input"]["notes"]).lower(), case.name
            outcomes[case.name] = "ok"
        else:
            with pytest.raises(AppError) as refused:
                explain_via_app(client, path)
            message = str(refused.value)
            assert case.app_message_fragment in message.lower(), (case.name, message)
            assert "Traceback" not in message and "\n" not in message
            outcomes[case.name] = message
        # the server still answers a good request after every case
        assert client.predict(image=handle_file(str(corpus / "good.png")), classifier="", api_name="/predict")
    assert len(outcomes) == len(APP_CASES)


@needs_app
def test_app_oversize_upload_is_refused_clearly_and_server_keeps_serving(served, client, corpus, tmp_path):
    import httpx
    from gradio.utils import _parse_file_size

    limit = _parse_file_size(served.app.MAX_FILE_SIZE)
    big = tmp_path / "big.png"
    with big.open("wb") as handle:  # sparse: one byte over the limit, no disk used for the zeros
        handle.write(badinputs.png_bytes(Image.new("L", (64, 64), 0)))
        handle.truncate(limit + 1)
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {limit} bytes"):
        explain_via_app(client, big)
    # a client that does not check: the server refuses the upload itself (HTTP 413)
    with big.open("rb") as handle:
        response = httpx.post(served.url + "gradio_api/upload", files={"files": ("big.png", handle)},
                              timeout=60, trust_env=False)
    assert response.status_code == 413, response.text
    assert f"maximum allowed size of {limit} bytes" in response.text
    assert not [p for p in served.gradio_cache.rglob("big.png")], "nothing of the refused upload is kept"
    assert all(p.stat().st_size < limit // 2 for p in served.gradio_cache.rglob("*") if p.is_file()), \
        "a partial copy of the refused upload stayed in the cache"
    assert explain_via_app(client, corpus / "good.png")[0]


@needs_app
def test_app_launches_with_a_max_file_size_and_without_error_details():
    from latentshift.app import server, serving

    class RecordingDemo:
        def launch(self, **options):
            return options

    options = server.launch(RecordingDemo())
    assert options["max_file_size"] == serving.MAX_FILE_SIZE
    from gradio.utils import _parse_file_size

    assert 0 < _parse_file_size(serving.MAX_FILE_SIZE) <= 100 * 1024 * 1024
    assert options.get("show_error") is False


@needs_app
def test_app_upload_name_with_path_separators_stays_in_the_cache(served, client, corpus):
    """A raw upload named '../../etc/passwd.png' lands inside Gradio's cache, not in /etc."""
    import httpx
    from gradio_client.exceptions import AppError

    content = badinputs.case_bytes(next(c for c in CASES if c.name == "traversal_name"))
    response = httpx.post(served.url + "gradio_api/upload",
                          files={"files": ("../../etc/passwd.png", content, "image/png")}, timeout=30,
                          trust_env=False)
    assert response.status_code == 200, response.text
    [stored] = response.json()
    stored_path = Path(stored).resolve()
    assert served.gradio_cache.resolve() in stored_path.parents, stored_path
    assert ".." not in Path(stored).parts
    with pytest.raises(AppError, match="not an image"):
        client.predict(image={"path": stored, "meta": {"_type": "gradio.FileData"}, "orig_name": "passwd.png"},
                       **FAST_EXPLAIN, api_name="/explain")
    # a path outside the cache is not readable through the API
    with pytest.raises(Exception) as outside:
        client.predict(image={"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
                       **FAST_EXPLAIN, api_name="/explain")
    assert "root:x:" not in str(outside.value)


@needs_app
def test_ui_upload_box_lets_the_imaging_message_through(served, corpus):
    """What the browser's upload box does with each refused case: pass the file on, or a gr.Error."""
    import gradio as gr
    from gradio.components.image import ImageData

    [upload_box] = [block for block in served.demo.blocks.values()
                    if isinstance(block, gr.Image) and str(block.label).startswith("X-ray (")]
    escaped = {}
    for case in APP_CASES:
        path = case.path(corpus)
        try:
            upload_box.preprocess(ImageData(path=str(path), orig_name=path.name))
        except gr.Error:
            pass
        except Exception as error:  # noqa: BLE001 - what reaches the page as a bare "Error"
            escaped[case.name] = type(error).__name__
    assert escaped == {}
