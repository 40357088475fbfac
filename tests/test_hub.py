"""Hub and URL sources through the real download code, against a fake Hub on 127.0.0.1.

No test reaches a remote host: HF_ENDPOINT points at :mod:`fakehub`, at a closed port or
at a server that never answers; caches live in tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save as save_safetensors
from torch import nn

from fakehub import (FakeHub, SilentServer, closed_port_url, fill_hub_cache, git_like_commit, self_signed_certificate,
                     sha256_hex)
from latentshift import weights
from latentshift.weights import hub
from latentshift.errors import IntegrityError, ModelUnavailableError, WeightsError
from latentshift.models import register_architecture
from latentshift.weights import Manifest, ModelEntry, load_model, load_model_or_default, model_status

LABELS = ["Atelectasis", "", "Effusion"]


class TinyClassifier(nn.Module):
    """A 3-output classifier small enough to serialise in a few hundred bytes."""

    def __init__(self, labels=LABELS, thresholds=None, resolution=8):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2, len(labels))
        self.pathologies = list(labels)
        self.resolution = resolution

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@register_architecture("test-hub-tiny-classifier")
def _build_tiny(*, labels, thresholds=None, resolution=8, **_):
    return TinyClassifier(labels, thresholds, resolution)


class Marker:
    """Unpickling this runs a shell command that creates a marker file (it must never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def reference_model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()


def safetensors_bytes(model: nn.Module) -> bytes:
    return save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})


def pickle_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def hub_entry(repo_id: str, data: bytes | None, *, commit: str | None, fmt="safetensors",
              filename="model.bin", sha256: str | None = "auto", size: int | None = None,
              entry_id="tiny", base_dir: Path = Path(".")) -> ModelEntry:
    """A manifest entry for the tiny classifier on the (fake) Hub."""
    digest = sha256_hex(data) if sha256 == "auto" else sha256
    return ModelEntry.from_dict({
        "id": entry_id, "kind": "classifier", "architecture": "test-hub-tiny-classifier",
        "labels": LABELS, "thresholds": [0.5, None, 0.4], "resolution": 8, "format": fmt,
        "source": {"type": "hub", "repo_id": repo_id, "filename": filename, "revision": commit,
                   "sha256": digest, "size": size if size is not None else (len(data) if data else None)},
    }, base_dir)


def same_weights(model: nn.Module, reference: nn.Module) -> bool:
    ours, theirs = model.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path, monkeypatch):
    """Fresh caches under tmp_path, online mode, no opt-in, no remembered reachability."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "LATENTSHIFT_ALLOW_UNVERIFIED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True, raising=False)
    hub.forget_reachability()
    yield
    hub.forget_reachability()


@pytest.fixture
def fake_hub(monkeypatch):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_download_verify_and_load_safetensors(fake_hub, tmp_path):
    reference = reference_model()
    data = safetensors_bytes(reference)
    commit = fake_hub.add_file("test-org/tiny", "model.safetensors", data)
    entry = hub_entry("test-org/tiny", data, commit=commit, filename="model.safetensors")

    model = load_model(entry)

    assert same_weights(model, reference)
    assert model.pathologies == LABELS and model.model_id == "tiny"
    assert model.thresholds[0] == 0.5 and model.thresholds[1] != model.thresholds[1]  # None -> NaN
    cached = hub.cached_path(entry)
    assert cached is not None and str(cached).startswith(str(tmp_path / "hub-cache"))
    assert ("GET", f"/test-org/tiny/resolve/{commit}/model.safetensors") in fake_hub.requests
    assert model_status(entry) == weights.ModelStatus(True, True, True, "cached, sha256 verified")


def test_download_whole_pickled_model_keeps_only_its_state_dict(fake_hub):
    reference = reference_model()
    data = pickle_bytes(reference)  # like torchxrayvision's model.pt: a whole pickled model
    commit = fake_hub.add_file("test-org/pickled", "model.pt", data)
    entry = hub_entry("test-org/pickled", data, commit=commit, filename="model.pt", fmt="torch-pickle")

    model = load_model(entry)

    assert isinstance(model, TinyClassifier) and same_weights(model, reference)


def test_cached_model_loads_without_any_request(fake_hub):
    data = safetensors_bytes(reference_model())
    commit = fake_hub.add_file("test-org/tiny", "model.safetensors", data)
    entry = hub_entry("test-org/tiny", data, commit=commit, filename="model.safetensors")
    load_model(entry)
    fake_hub.requests.clear()

    load_model(entry)
    assert model_status(entry).available

    assert fake_hub.requests == []


def test_hash_mismatch_is_refused_naming_both_hashes_and_file_is_kept(fake_hub):
    served = safetensors_bytes(reference_model())
    commit = fake_hub.add_file("test-org/tiny", "model.safetensors", served)
    expected = "0" * 64
    entry = hub_entry("test-org/tiny", served, commit=commit, filename="model.safetensors", sha256=expected)

    with pytest.raises(IntegrityError) as caught:
        load_model(entry)

    message = str(caught.value)
    assert expected in message and sha256_hex(served) in message
    kept = hub.cached_path(entry)
    assert kept is not None and kept.read_bytes() == served  # refused, not deleted
    status = model_status(entry)
    assert (status.available, status.cached, status.verified) == (False, True, False)
    assert expected in status.reason


def test_size_mismatch_is_refused(fake_hub):
    served = safetensors_bytes(reference_model())
    commit = fake_hub.add_file("test-org/tiny", "model.safetensors", served)
    entry = hub_entry("test-org/tiny", served, commit=commit, filename="model.safetensors",
                      size=len(served) + 1)
    with pytest.raises(IntegrityError, match="bytes"):
        weights.fetch(entry)


def test_tampered_cached_pickle_is_refused_before_unpickling(fake_hub, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    genuine = pickle_bytes(reference_model())
    commit = git_like_commit("tampered")
    evil = pickle_bytes(Marker(marker))
    fill_hub_cache(tmp_path / "hub-cache", "test-org/tampered", commit, "model.pt", evil)
    entry = hub_entry("test-org/tampered", genuine, commit=commit, filename="model.pt",
                      fmt="torch-pickle", size=len(evil))  # same size: only the hash catches it
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))

    with pytest.raises(IntegrityError, match=sha256_hex(evil)):
        load_model(entry)

    assert loads == [] and not marker.exists()


def test_repository_not_found(fake_hub):
    entry = hub_entry("test-org/missing", b"x", commit=git_like_commit("missing"))
    with pytest.raises(ModelUnavailableError, match="repository test-org/missing not found"):
        weights.fetch(entry)


def test_revision_not_found(fake_hub):
    data = safetensors_bytes(reference_model())
    fake_hub.add_file("test-org/tiny", "model.safetensors", data)
    wrong = git_like_commit("a revision that does not exist")
    entry = hub_entry("test-org/tiny", data, commit=wrong, filename="model.safetensors")
    with pytest.raises(ModelUnavailableError, match=f"revision {wrong} of test-org/tiny not found"):
        weights.fetch(entry)


def test_file_not_found_at_revision(fake_hub):
    commit = fake_hub.add_file("test-org/tiny", "other.bin", b"abc")
    entry = hub_entry("test-org/tiny", b"abc", commit=commit, filename="model.safetensors")
    with pytest.raises(ModelUnavailableError, match="model.safetensors not found"):
        weights.fetch(entry)


def test_unpinned_revision_is_refused_without_network(fake_hub):
    entry = hub_entry("test-org/tiny", b"abc", commit=None)
    with pytest.raises(ModelUnavailableError, match="revision not pinned"):
        weights.fetch(entry)
    branch = hub_entry("test-org/tiny", b"abc", commit="main")
    with pytest.raises(ModelUnavailableError, match="revision not pinned"):
        weights.fetch(branch)
    assert model_status(entry).reason == "revision not pinned"
    assert fake_hub.requests == []


def test_offline_with_cache_loads_with_no_server(tmp_path, monkeypatch):
    reference = reference_model()
    data = safetensors_bytes(reference)
    commit = git_like_commit("offline")
    fill_hub_cache(tmp_path / "hub-cache", "test-org/offline", commit, "model.safetensors", data)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    probes = []
    monkeypatch.setattr(hub, "_probe", lambda *a: probes.append(a) or False)
    entry = hub_entry("test-org/offline", data, commit=commit, filename="model.safetensors")

    model = load_model(entry)

    assert same_weights(model, reference) and probes == []
    assert model_status(entry).verified is True


def test_offline_without_cache_is_unavailable_and_falls_back_to_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = reference_model()
    default_file = tmp_path / "default.safetensors"
    default_file.write_bytes(safetensors_bytes(reference))
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps({"models": [
        {"id": "embedded", "kind": "classifier", "architecture": "test-hub-tiny-classifier",
         "labels": LABELS, "resolution": 8, "embedded_default": True,
         "source": {"type": "file", "path": "default.safetensors",
                    "sha256": sha256_hex(default_file.read_bytes()), "size": default_file.stat().st_size}},
        {"id": "remote", "kind": "classifier", "architecture": "test-hub-tiny-classifier",
         "labels": LABELS, "resolution": 8,
         "source": {"type": "hub", "repo_id": "test-org/remote", "filename": "model.safetensors",
                    "revision": git_like_commit("remote"), "sha256": "ab" * 32, "size": 10}},
    ]}))
    manifest = Manifest.load(manifest_path)

    with pytest.raises(ModelUnavailableError, match="offline"):
        load_model(manifest.get("remote"))
    status = model_status(manifest.get("remote"))
    assert (status.available, status.cached) == (False, False) and "offline" in status.reason

    model, entry, warning = load_model_or_default(manifest, "remote", "classifier")

    assert entry.id == "embedded" and same_weights(model, reference)
    assert "'remote'" in warning and "offline" in warning and "'embedded'" in warning


def test_unreachable_endpoint_is_decided_once_and_quickly(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    entry = hub_entry("test-org/tiny", b"abc", commit=git_like_commit("unreachable"))
    probes = []
    real_probe = hub._probe
    monkeypatch.setattr(hub, "_probe", lambda *a: probes.append(a) or real_probe(*a))

    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(ModelUnavailableError, match="cannot be reached"):
            weights.fetch(entry)
    assert not model_status(entry).available
    assert time.monotonic() - started < 3.0
    assert len(probes) == 1


def test_silent_server_costs_one_probe_timeout_at_most():
    with SilentServer() as silent:
        started = time.monotonic()
        assert hub.is_reachable(silent.url) is False
        assert hub.is_reachable(silent.url + "/some/file") is False
        assert time.monotonic() - started < 3.0


def test_unknown_hash_refused_without_opt_in_before_downloading(fake_hub):
    data = safetensors_bytes(reference_model())
    commit = fake_hub.add_file("test-org/unknown", "model.safetensors", data)
    entry = hub_entry("test-org/unknown", data, commit=commit, filename="model.safetensors", sha256=None)

    with pytest.raises(ModelUnavailableError, match="LATENTSHIFT_ALLOW_UNVERIFIED"):
        load_model(entry)

    assert fake_hub.requests == []
    assert model_status(entry).reason == "hash unknown, refused without opt-in"


def test_unknown_hash_accepted_with_opt_in_through_weights_only(fake_hub, monkeypatch):
    reference = reference_model()
    data = pickle_bytes(reference.state_dict())  # a plain state dict: readable with weights_only=True
    commit = fake_hub.add_file("test-org/unknown", "model.pt", data)
    entry = hub_entry("test-org/unknown", data, commit=commit, filename="model.pt",
                      fmt="torch-pickle", sha256=None)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    model, warning = weights.load_model_with_warning(entry, allow_unverified=True)

    assert same_weights(model, reference) and calls == [True]
    assert "WITHOUT hash verification" in warning
    status = model_status(entry, allow_unverified=True)
    assert (status.available, status.cached, status.verified) == (True, True, None)


def test_unverified_pickle_carrying_code_is_refused_and_never_run(fake_hub, tmp_path):
    marker = tmp_path / "pwned"
    data = pickle_bytes(Marker(marker))
    commit = fake_hub.add_file("test-org/evil", "model.pt", data)
    entry = hub_entry("test-org/evil", data, commit=commit, filename="model.pt",
                      fmt="torch-pickle", sha256=None)

    with pytest.raises(WeightsError, match="refusing to unpickle"):
        load_model(entry, allow_unverified=True)

    assert not marker.exists()


def test_unverified_whole_pickled_model_is_refused_with_a_clear_message(fake_hub):
    data = pickle_bytes(reference_model())  # needs arbitrary unpickling
    commit = fake_hub.add_file("test-org/whole", "model.pt", data)
    entry = hub_entry("test-org/whole", data, commit=commit, filename="model.pt",
                      fmt="torch-pickle", sha256=None)
    with pytest.raises(WeightsError, match="not a plain tensor file"):
        load_model(entry, allow_unverified=True)


def url_entry(url: str, sha256: str | None = None) -> ModelEntry:
    return ModelEntry.from_dict({
        "id": "ae", "kind": "classifier", "architecture": "test-hub-tiny-classifier", "labels": LABELS,
        "format": "torch-pickle",
        "source": {"type": "url", "url": url, "sha256": sha256, "size": None},
    }, Path("."))


def test_url_source_needs_opt_in_and_fails_fast_when_unreachable(monkeypatch, tmp_path):
    entry = url_entry(closed_port_url() + "/assets/v1/ae.pt")
    with pytest.raises(ModelUnavailableError, match="no sha256"):
        weights.fetch(entry)
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        weights.fetch(entry, allow_unverified=True)
    assert time.monotonic() - started < 3.0
    assert str(hub.url_cache_path(entry)).startswith(str(tmp_path / "hf-home" / "latentshift"))


def test_url_source_downloads_into_the_cache_with_opt_in(fake_hub):
    reference = reference_model()
    data = pickle_bytes(reference.state_dict())
    commit = fake_hub.add_file("assets/v1", "ae.pt", data)
    entry = url_entry(f"{fake_hub.url}/assets/v1/resolve/{commit}/ae.pt")

    model, warning = weights.load_model_with_warning(entry, allow_unverified=True)

    assert same_weights(model, reference) and "WITHOUT hash verification" in warning
    assert hub.cached_path(entry).read_bytes() == data
    fake_hub.requests.clear()
    weights.load_model(entry, allow_unverified=True)
    assert fake_hub.requests == []


def test_settings_are_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub.hub_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub.hub_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert hub.hub_endpoint() == "http://127.0.0.1:9"
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.is_offline()


def test_weights_add_pins_a_hub_model_with_the_hash_of_its_download(fake_hub, tmp_path, capsys):
    from latentshift.cli import main

    data = b"pretend torchxrayvision weights"
    commit = fake_hub.add_file("test-org/densenet-nih", "model.pt", data)
    mine = tmp_path / "my_models.json"
    assert main(["weights", "add", "test-org/densenet-nih", "--revision", commit, "--labels", "Effusion,Mass",
                 "--to", str(mine)]) == 0
    entry = json.loads(mine.read_text())["models"][0]
    assert entry["id"] == "densenet-nih" and entry["labels"] == ["Effusion", "Mass"]
    assert entry["source"] == {"type": "hub", "repo_id": "test-org/densenet-nih", "filename": "model.pt",
                               "revision": commit, "sha256": sha256_hex(data), "size": len(data)}
    assert "added densenet-nih" in capsys.readouterr().out
    assert main(["weights", "add", "test-org/densenet-nih", "--revision", "main", "--to", str(mine)]) == 2
    assert "40-hex commit" in capsys.readouterr().err


@pytest.fixture
def https_hub(tmp_path, monkeypatch):
    """The fake Hub over HTTPS with a self-signed certificate that this process trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make a test certificate")
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with FakeHub(tls=(cert, key)) as server:
        yield server


def test_unknown_hash_over_https_loads_tensors_only_with_a_note_and_no_opt_in(https_hub):
    reference = reference_model()
    data = pickle_bytes(reference.state_dict())  # torchxrayvision's ResNetAE file is such a state dict
    commit = https_hub.add_file("mlmed/releases", "ae.pt", data)
    entry = url_entry(f"{https_hub.url}/mlmed/releases/resolve/{commit}/ae.pt")
    assert hub.unverified_permitted(entry) == "read as plain tensors from the HTTPS source " + https_hub.url[8:]
    status = model_status(entry)
    assert status.available and "unverified" in status.reason and "HTTPS" in status.reason

    model, warning = weights.load_model_with_warning(entry)

    assert same_weights(model, reference)
    assert "WITHOUT hash verification" in warning and "HTTPS source" in warning
    assert "latentshift weights pin ae" in warning


def test_unknown_hash_over_https_still_needs_a_pin_to_unpickle_a_whole_model(https_hub, tmp_path):
    marker = tmp_path / "pwned"
    commit = https_hub.add_file("mlmed/releases", "model.pt", pickle_bytes(Marker(marker)))
    entry = url_entry(f"{https_hub.url}/mlmed/releases/resolve/{commit}/model.pt")
    with pytest.raises(WeightsError, match="loads only with a pinned sha256"):
        load_model(entry)
    assert not marker.exists()


def test_unknown_hash_over_plain_http_is_still_refused(fake_hub):
    commit = fake_hub.add_file("mlmed/releases", "ae.pt", pickle_bytes(reference_model().state_dict()))
    entry = url_entry(f"{fake_hub.url}/mlmed/releases/resolve/{commit}/ae.pt")
    assert hub.unverified_permitted(entry) is None
    with pytest.raises(ModelUnavailableError, match="no sha256"):
        load_model(entry)
    assert fake_hub.requests == []


def write_manifest(path: Path, *entries: dict) -> Path:
    path.write_text(json.dumps({"format_version": 1, "models": list(entries)}, indent=2) + "\n")
    return path


def test_weights_pin_records_sha256_and_size_then_the_model_loads_verified(fake_hub, tmp_path, capsys):
    from latentshift.cli import main

    data = pickle_bytes(reference_model().state_dict())
    commit = fake_hub.add_file("mlmed/releases", "ae.pt", data)
    url = f"{fake_hub.url}/mlmed/releases/resolve/{commit}/ae.pt"
    mine = write_manifest(tmp_path / "mine.json", {
        "id": "paper-ae", "kind": "classifier", "architecture": "test-hub-tiny-classifier", "labels": LABELS,
        "resolution": 8, "format": "torch-pickle", "source": {"type": "url", "url": url, "sha256": None, "size": None},
        "description": "kept as it is"})

    assert main(["weights", "--manifest", str(mine), "pin", "paper-ae"]) == 0   # in place: the manifest listing it

    source = json.loads(mine.read_text())["models"][0]["source"]
    assert (source["sha256"], source["size"], source["url"]) == (sha256_hex(data), len(data), url)
    assert "latentshift weights pin" in source["note"]
    assert f"pinned paper-ae: sha256 {sha256_hex(data)}" in capsys.readouterr().out
    model, warning = weights.load_model_with_warning(Manifest.load(mine).get("paper-ae"))
    assert warning is None and same_weights(model, reference_model())


def test_weights_pin_to_a_file_of_your_own_and_a_changed_file_is_refused(fake_hub, tmp_path, capsys):
    from latentshift.cli import main

    data = safetensors_bytes(reference_model())
    commit = fake_hub.add_file("test-org/tiny", "model.safetensors", data)
    listed = write_manifest(tmp_path / "listed.json", {
        "id": "tiny", "kind": "classifier", "architecture": "test-hub-tiny-classifier", "labels": LABELS,
        "resolution": 8, "source": {"type": "hub", "repo_id": "test-org/tiny", "filename": "model.safetensors",
                                    "revision": commit, "sha256": None, "size": None}})
    before = listed.read_text()
    mine = tmp_path / "pins.json"

    assert main(["weights", "--manifest", str(listed), "pin", "tiny", "--to", str(mine)]) == 0

    assert listed.read_text() == before, "--to leaves the listing manifest alone"
    entry = Manifest.load(mine).get("tiny")
    assert entry.sha256 == sha256_hex(data) and entry.size == len(data) and entry.labels == tuple(LABELS)
    assert "--manifest" in capsys.readouterr().out
    fake_hub.repos["test-org/tiny"][commit]["model.safetensors"] = b"replaced"
    listed.write_text(mine.read_text())
    hub.cached_path(entry).unlink()  # a fresh download meets the replaced file
    assert main(["weights", "--manifest", str(listed), "pin", "tiny"]) == 2
    assert "refusing to overwrite the pin" in capsys.readouterr().err
    assert Manifest.load(listed).get("tiny").sha256 == sha256_hex(data)


def test_the_package_manifest_round_trips_through_json_as_pin_writes_it():
    from latentshift.weights.manifest import DEFAULT_MANIFEST

    text = DEFAULT_MANIFEST.read_text(encoding="utf-8")
    assert json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n" == text
