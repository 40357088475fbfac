"""The pair the app answers with: the manifest's ranking, cached weights first, a background fetch,
the embedded pair meanwhile, and one line saying which pair answers and why.

Tiny conv models stand in for the paper's pair: a Hub classifier (the fake Hub on 127.0.0.1) and a
URL autoencoder; caches live in tmp_path and no test reaches a remote host.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save as save_safetensors

from fakehub import FakeHub, SilentServer, fill_hub_cache, git_like_commit, self_signed_certificate, sha256_hex
from latentshift.weights import Manifest, hub
from latentshift.weights.manifest import ServingPair
from latentshift.weights.preference import ServingDefault
from latentshift.weights.store import ModelStore
from tiny_models import TinyConvAutoencoder, TinyConvClassifier, write_tiny_manifest

PAPER = ServingPair("paper-classifier", "paper-autoencoder", "the paper's pair")
EMBEDDED = ServingPair("tiny-classifier", "tiny-autoencoder", "the embedded demo pair")


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "LATENTSHIFT_ALLOW_UNVERIFIED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True, raising=False)
    hub.forget_reachability()
    yield
    hub.forget_reachability()


def paper_files() -> tuple[bytes, bytes]:
    """(classifier as safetensors, autoencoder as a torch state dict) of the stand-in paper pair."""
    torch.manual_seed(5)
    classifier = save_safetensors({k: v.contiguous() for k, v in TinyConvClassifier().state_dict().items()})
    buffer = io.BytesIO()
    torch.save(TinyConvAutoencoder().state_dict(), buffer)
    return classifier, buffer.getvalue()


def ranked_manifest(folder: Path, autoencoder_url: str, *, autoencoder_sha256: bool = True) -> Path:
    """The tiny embedded pair plus the stand-in paper pair, ranked first."""
    path = write_tiny_manifest(folder)
    data = json.loads(path.read_text())
    classifier, autoencoder = paper_files()
    data["models"] += [
        {"id": "paper-classifier", "kind": "classifier", "architecture": "test-tiny-classifier", "resolution": 32,
         "labels": ["Pneumonia", "Effusion"], "population": "adult",
         "source": {"type": "hub", "repo_id": "paper/classifier", "filename": "model.safetensors",
                    "revision": git_like_commit("paper/classifier"), "sha256": sha256_hex(classifier),
                    "size": len(classifier)}},
        {"id": "paper-autoencoder", "kind": "autoencoder", "architecture": "test-tiny-autoencoder", "resolution": 32,
         "format": "torch-pickle",
         "source": {"type": "url", "url": autoencoder_url, "sha256": sha256_hex(autoencoder) if autoencoder_sha256
                    else None, "size": len(autoencoder) if autoencoder_sha256 else None}}]
    data["serving"] = [{"classifier": PAPER.classifier, "autoencoder": PAPER.autoencoder, "label": PAPER.label},
                       {"classifier": EMBEDDED.classifier, "autoencoder": EMBEDDED.autoencoder,
                        "label": EMBEDDED.label}]
    path.write_text(json.dumps(data))
    return path


def serve_paper_pair(server: FakeHub) -> str:
    """Put both files on ``server``; returns the autoencoder's URL."""
    classifier, autoencoder = paper_files()
    server.add_file("paper/classifier", "model.safetensors", classifier, git_like_commit("paper/classifier"))
    commit = server.add_file("mlmed/releases", "ae.pt", autoencoder)
    return f"{server.url}/mlmed/releases/resolve/{commit}/ae.pt"


def serving_for(manifest: Path) -> ServingDefault:
    return ServingDefault(ModelStore(Manifest.load(manifest)))


def test_the_ranking_puts_the_embedded_pair_last_and_survives_a_merge(tmp_path):
    manifest = Manifest.load(ranked_manifest(tmp_path, "https://example.invalid/ae.pt"))
    assert manifest.serving() == [PAPER, EMBEDDED]
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"models": [dict(json.loads((tmp_path / "manifest.json").read_text())["models"][2],
                                                 description="an override of the same id")]}))
    assert manifest.merged(Manifest.load(extra)).serving() == [PAPER, EMBEDDED], "an override keeps the ranking"
    (tmp_path / "plain").mkdir()
    plain = Manifest.load(write_tiny_manifest(tmp_path / "plain"))  # no ranking: the embedded pair alone
    assert [(p.classifier, p.autoencoder) for p in plain.serving()] == [("tiny-classifier", "tiny-autoencoder")]
    assert Manifest.load().serving()[0] == ServingPair("densenet121-res224-all", "resnetae-101-elastic",
                                                       "the Latent Shift paper's pair")


def test_cached_weights_answer_at_once_without_the_network(tmp_path, monkeypatch):
    classifier, autoencoder = paper_files()
    url = "https://github.invalid/mlmed/releases/ae.pt"
    manifest = ranked_manifest(tmp_path, url)
    fill_hub_cache(tmp_path / "hub-cache", "paper/classifier", git_like_commit("paper/classifier"),
                   "model.safetensors", classifier)
    entry = Manifest.load(manifest).get("paper-autoencoder")
    hub.url_cache_path(entry).parent.mkdir(parents=True)
    hub.url_cache_path(entry).write_bytes(autoencoder)
    probes = []
    monkeypatch.setattr(hub, "_probe", lambda *a: probes.append(a) or False)

    state = serving_for(manifest).start()

    assert state.pair == PAPER and state.note is None and state.fetching is None and probes == []
    assert state.line() == "Answering with the paper's pair (`paper-classifier` + `paper-autoencoder`)."


def test_missing_weights_are_fetched_in_the_background_while_the_embedded_pair_answers(tmp_path, monkeypatch):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        serving = serving_for(ranked_manifest(tmp_path, serve_paper_pair(server)))
        started = time.monotonic()
        state = serving.start()
        assert time.monotonic() - started < 1.0
        assert state.pair == EMBEDDED and state.fetching == PAPER
        assert state.line().startswith("Answering with the embedded demo pair (`tiny-classifier` + "
                                       "`tiny-autoencoder`), because the paper's pair (`paper-classifier` + "
                                       "`paper-autoencoder`) is being fetched in the background")
        assert serving.wait(30)
        assert serving.state().pair == PAPER and serving.state().line().endswith("`paper-autoencoder`).")
        assert sum(method == "GET" for method, _ in server.requests) == 2
        assert serving.store.loaded_ids()[-2:] == ["paper-classifier", "paper-autoencoder"]


def test_start_never_waits_on_an_unreachable_hub_and_the_line_says_why(tmp_path, monkeypatch):
    with SilentServer() as silent:  # accepts connections, never answers: the worst probe
        monkeypatch.setenv("HF_ENDPOINT", silent.url)
        serving = serving_for(ranked_manifest(tmp_path, silent.url + "/ae.pt"))
        started = time.monotonic()
        assert serving.start().pair == EMBEDDED
        assert time.monotonic() - started < 1.0
        assert serving.wait(10)
    state = serving.state()
    assert state.pair == EMBEDDED and state.fetching is None
    assert "the paper's pair (`paper-classifier` + `paper-autoencoder`) is unavailable here: paper-classifier: " \
           "127.0.0.1" in state.line() and "unreachable and not cached" in state.line()


def test_offline_the_embedded_pair_answers_and_nothing_is_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    serving = serving_for(ranked_manifest(tmp_path, "https://example.invalid/ae.pt"))
    assert serving.start().pair == EMBEDDED
    assert serving.wait(10)
    assert "offline (HF_HUB_OFFLINE) and not cached" in serving.state().line()


def test_an_unpinned_https_autoencoder_serves_with_the_unverified_note(tmp_path, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make a test certificate")
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with FakeHub() as plain, FakeHub(tls=(cert, key)) as secure:
        monkeypatch.setenv("HF_ENDPOINT", plain.url)
        serve_paper_pair(plain)
        serving = serving_for(ranked_manifest(tmp_path, serve_paper_pair(secure), autoencoder_sha256=False))
        serving.start()
        assert serving.wait(30)
    state = serving.state()
    assert state.pair == PAPER and state.unverified == ("paper-autoencoder",)
    assert "`paper-autoencoder` were loaded without hash verification (unverified_weights" in state.line()
