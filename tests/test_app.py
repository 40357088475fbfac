"""The Gradio app served on 127.0.0.1 and driven through gradio_client, as collaborators use it.

Small settings (6 frames, 4 Integrated-Gradients steps) keep each explanation to seconds on 2 cores.
"""

from __future__ import annotations

import json
import time
import socket
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from latentshift.app import handlers, layout, server, serving
from latentshift.errors import ImageInputError
from latentshift.options import ExplainOptions
from latentshift.pipeline import Pipeline

FAST = dict(frames=6, ig_steps=4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def example_image() -> str:
    examples = layout.example_images()
    assert examples, f"no example PNGs in {layout.EXAMPLES_DIR}"
    return examples[0]


@pytest.fixture(scope="module")
def client():
    demo = layout.build_demo()
    _, url, _ = server.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                           quiet=True)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


@pytest.fixture
def text_named_png(tmp_path) -> Path:
    path = tmp_path / "scan.png"
    path.write_text("patient notes, not an image\n", encoding="utf-8")
    return path


def gif_frame_count(path: str) -> int:
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        return gif.n_frames


def test_only_the_documented_endpoints_are_public(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/predict", "/explain", "/compare", "/result"}
    explain = [p["parameter_name"] for p in endpoints["/explain"]["parameters"]]
    assert explain == ["image", "classifier", "autoencoder", "target", "direction", "frames", "step_size",
                       "lambda_min", "lambda_max", "frame_duration_ms", "ig_steps", "frames_from", "allow_non_xray"], \
        "the documented parameters"


def test_compare_gives_one_gif_per_classifier_with_the_finding(client, example_image):
    gifs, plot, summary, lines = client.predict(handle_file(example_image), "Pneumonia", frames=4,
                                                api_name="/compare")
    data = json.loads(Path(summary).read_text(encoding="utf-8"))
    assert len(gifs) == len(data["classifiers"]) >= 1 and Path(plot).is_file()
    assert lines.splitlines()[0].startswith(data["classifiers"][0]["classifier"] + " — Pneumonia:")


def test_an_api_upload_must_be_a_file_not_a_server_path():
    """gr.api endpoints get the request's file description as is: a server path is refused."""
    import gradio as gr

    with pytest.raises(gr.Error, match="uploaded with the request"):
        handlers.uploaded_file({"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}})
    with pytest.raises(gr.Error, match="Send the X-ray as a file"):
        handlers.uploaded_file(None)


def test_predict_returns_probabilities(client, example_image):
    probabilities = client.predict(handle_file(example_image), api_name="/predict")
    assert set(probabilities) == set(Pipeline.get(handlers.default_model_id("classifier"),
                                                  handlers.default_model_id("autoencoder")).pathologies)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())


def test_explain_with_a_manual_range_returns_the_requested_frames_and_maps(client, example_image):
    gif, heatmap, gradcam, integrated_gradients, plot, counterfactual, summary_path = client.predict(
        handle_file(example_image), lambda_min=-40.0, lambda_max=40.0, **FAST, api_name="/explain")
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    assert len(summary["lambdas"]) == FAST["frames"]
    # The GIF plays the sweep forth and back: 2F-2 frames for F sweep frames.
    assert gif_frame_count(gif) == 2 * FAST["frames"] - 2 == summary["gif_frames"]
    for path in (heatmap, gradcam, integrated_gradients, plot, counterfactual):
        with Image.open(path) as image:
            assert image.format == "PNG"
    assert summary["options"]["lambda_range"] == [-40.0, 40.0]


def test_explain_with_the_automatic_search(client, example_image):
    gif, *_, summary_path = client.predict(handle_file(example_image), **FAST, api_name="/explain")
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    sweep_frames = len(summary["lambdas"])
    assert 1 <= sweep_frames <= FAST["frames"]
    assert gif_frame_count(gif) == (2 * sweep_frames - 2 if sweep_frames > 2 else sweep_frames)


def test_bad_upload_gives_the_imaging_message_and_the_server_keeps_serving(client, example_image,
                                                                          text_named_png):
    with pytest.raises(ImageInputError) as expected:
        Pipeline.get(handlers.default_model_id("classifier"), handlers.default_model_id("autoencoder")).load_image(
            text_named_png)
    with pytest.raises(AppError) as refused:
        client.predict(handle_file(str(text_named_png)), **FAST, api_name="/explain")
    assert str(expected.value) in str(refused.value)
    assert "Traceback" not in str(refused.value)

    probabilities = client.predict(handle_file(example_image), api_name="/predict")
    assert probabilities


def test_unknown_finding_is_refused_with_the_choices(client, example_image):
    with pytest.raises(AppError, match="choose one of"):
        client.predict(handle_file(example_image), target="No Such Finding", **FAST, api_name="/explain")


def test_command_line_defaults(monkeypatch):
    for variable in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "GRADIO_ROOT_PATH"):
        monkeypatch.delenv(variable, raising=False)
    options = serving.parse_args([])
    assert (options.host, options.port, options.share, options.offline, options.root_path) == (
        "127.0.0.1", 7860, False, False, None)
    assert serving.parse_args(["--offline", "--root-path", "/latentshift"]).root_path == "/latentshift"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")     # as on Hugging Face Spaces
    assert serving.parse_args([]).host == "0.0.0.0"


def _explain_page(client, image: Path) -> tuple[str, str, float]:
    """The page's own streamed Explain event; (status, result id, seconds)."""
    import re
    import time

    started = time.perf_counter()
    outputs = client.predict(handle_file(str(image)), None, handlers.default_model_id("classifier"),
                             handlers.default_model_id("autoencoder"), "", "both", 6, 10.0, layout.RANGE_AUTOMATIC,
                             None, None, 50, 4, api_name="/explain_page")
    seconds = time.perf_counter() - started
    texts = [value for value in outputs if isinstance(value, str)]
    status = next(t for t in texts if "Explaining" in t or "Busy:" in t or "Not explained" in t)
    link = next((m.group(1) for t in texts if (m := re.search(r"\?result=([0-9a-f]{64})", t))), None)
    return status, link, seconds


def test_a_stored_result_comes_back_at_once_and_its_link_outlives_a_restart(tmp_path):
    from appserver import serve_app

    import badinputs

    image = badinputs.good_png(tmp_path / "xray.png")
    results = tmp_path / "results"
    with serve_app(tmp_path / "first", results=results) as served:
        client = served.client()
        status, link, fresh_s = _explain_page(client, image)
        assert "Done in" in status and link, status
        again_status, again_link, stored_s = _explain_page(client, image)
        assert again_link == link and "explained before" in again_status, again_status
        print(f"fresh explanation {fresh_s:.2f} s, from the store {stored_s:.2f} s")
    with serve_app(tmp_path / "second", results=results) as served:   # a restart on the same store
        client = served.client()
        state, summary, gif = client.predict(link, api_name="/result")
        assert state == "ok" and json.loads(Path(summary).read_text())["target"] and gif.endswith(".gif")
        assert served.runs.store.delete(link)
        assert client.predict(link, api_name="/result")[0] == "deleted"
        assert client.predict("0" * 64, api_name="/result")[0] == "unknown"


def test_the_explain_api_keeps_its_result_and_answers_a_repeat_from_the_store(tmp_path):
    from appserver import serve_app

    import badinputs
    from latentshift.app import runs

    image = badinputs.good_png(tmp_path / "xray.png")
    with serve_app(tmp_path / "app") as served:
        client = served.client()
        started = time.perf_counter()
        first = client.predict(handle_file(str(image)), **FAST, api_name="/explain")
        fresh_s, started = time.perf_counter() - started, time.perf_counter()
        folders = sorted(served.app.run_folders().root.glob("run-*"))
        second = client.predict(handle_file(str(image)), **FAST, api_name="/explain")
        stored_s = time.perf_counter() - started
        assert sorted(served.app.run_folders().root.glob("run-*")) == folders, "the repeat ran the models again"
        assert [Path(f).read_bytes() for f in first] == [Path(f).read_bytes() for f in second]
        options = ExplainOptions(**FAST).validate()
        result_id = runs.run_key(str(image), "", "", options)[0]
        assert served.runs.store.get(result_id) is not None, "the API's result is not in the store"
        state, summary, _ = client.predict(result_id, api_name="/result")
        assert state == "ok" and Path(summary).read_bytes() == Path(first[-1]).read_bytes()
        print(f"/explain fresh {fresh_s:.2f} s, from the store {stored_s:.2f} s")


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory) -> str:
    import numpy as np

    path = tmp_path_factory.mktemp("noise") / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_predict_refuses_noise_with_the_reason_unless_asked(client, noise_png, example_image):
    with pytest.raises(AppError, match="not a frontal chest X-ray"):
        client.predict(handle_file(noise_png), api_name="/predict")
    record = client.predict(handle_file(noise_png), details=True, api_name="/predict")
    assert record["predictions"] is None and "allow_non_xray" in record["held_back"]
    assert "not_a_chest_xray" in [w["code"] for w in record["domain"]["warnings"]]
    assert client.predict(handle_file(noise_png), allow_non_xray=True, api_name="/predict")
    checked = client.predict(handle_file(example_image), details=True, api_name="/predict")
    assert checked["held_back"] is None and checked["predictions"] and checked["domain"]["population"] == "pediatric"


def test_explain_refuses_noise_and_picks_the_classifier_by_target(client, noise_png):
    with pytest.raises(AppError, match="not a frontal chest X-ray"):
        client.predict(handle_file(noise_png), **FAST, api_name="/explain")
    adult = sorted(Path(layout.ADULT_EXAMPLES_DIR).glob("cardiomegaly-*.png"))[0]
    *_, summary_path = client.predict(handle_file(str(adult)), target="Cardiomegaly", lambda_min=-20.0,
                                      lambda_max=20.0, **FAST, api_name="/explain")
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    assert summary["classifier"] == "demo-adult-cardiomegaly" and summary["target"] == "Cardiomegaly"


def test_the_api_info_names_the_outputs(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [r["label"] for r in endpoints["/explain"]["returns"]] == list(handlers.EXPLAIN_API_FILES)
    assert all(r["python_type"]["type"] == "filepath" for r in endpoints["/explain"]["returns"])
    assert [r["label"] for r in endpoints["/compare"]["returns"]] == ["gifs", "plot", "compare_json", "lines"]
