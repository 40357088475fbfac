"""Manifest entries, file sources, safe deserialisation, fallback, the weights CLI and the Space card."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file
from torch import nn

from fakehub import fill_hub_cache, git_like_commit, sha256_hex
from latentshift import cli, weights
from latentshift.weights import hub
from latentshift.errors import IntegrityError, ModelUnavailableError, WeightsError
from latentshift.models import register_architecture
from latentshift.weights import Manifest, ModelEntry, load_model, load_model_or_default, read_state_dict

REPO = Path(__file__).resolve().parent.parent
LABELS = ["Pneumonia", "Effusion"]


class TinyLinear(nn.Module):
    """Two logits from a mean-pooled image: the smallest model the loaders can build."""

    def __init__(self, labels=LABELS, resolution=4):
        super().__init__()
        self.linear = nn.Linear(1, len(labels))
        self.resolution = resolution

    def forward(self, x):
        return self.linear(x.mean(dim=(1, 2, 3)).unsqueeze(1))


@register_architecture("test-weights-tiny-linear")
def _build_tiny_linear(*, labels, resolution=4, **_):
    return TinyLinear(labels, resolution)


class Marker:
    """Unpickling this runs a shell command that creates a marker file (it must never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def model_with(value: float) -> TinyLinear:
    model = TinyLinear()
    with torch.no_grad():
        model.linear.weight.fill_(value)
        model.linear.bias.fill_(-value)
    return model


def write_safetensors(path: Path, model: nn.Module) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def file_entry(entry_id: str, path: Path, *, sha256="auto", default=False, fmt="safetensors") -> dict:
    return {"id": entry_id, "kind": "classifier", "architecture": "test-weights-tiny-linear", "labels": LABELS,
            "resolution": 4, "format": fmt, "embedded_default": default,
            "source": {"type": "file", "path": path.name,
                       "sha256": sha256_hex(path.read_bytes()) if sha256 == "auto" else sha256,
                       "size": path.stat().st_size}}


def write_manifest(folder: Path, entries: list[dict]) -> Path:
    path = folder / "manifest.json"
    path.write_text(json.dumps({"format_version": 1, "models": entries}))
    return path


@pytest.fixture(autouse=True)
def offline_and_isolated(tmp_path, monkeypatch):
    """Offline, caches under tmp_path: nothing here may touch the network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LATENTSHIFT_ALLOW_UNVERIFIED", raising=False)
    monkeypatch.delenv("LATENTSHIFT_MANIFEST", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_probe", lambda *a: pytest.fail("no network probe expected"))
    hub.forget_reachability()


# --------------------------------------------------------------------------- file sources

def test_file_source_loads_after_verification(tmp_path):
    write_safetensors(tmp_path / "m.safetensors", model_with(0.5))
    manifest = Manifest.load(write_manifest(tmp_path, [file_entry("m", tmp_path / "m.safetensors")]))
    model = load_model(manifest.get("m"))
    assert torch.all(model.linear.weight == 0.5) and model.pathologies == LABELS
    assert not any(p.requires_grad for p in model.parameters())


def test_tampered_byte_in_file_source_is_refused_before_deserialisation(tmp_path, monkeypatch):
    path = write_safetensors(tmp_path / "m.safetensors", model_with(0.5))
    manifest = Manifest.load(write_manifest(tmp_path, [file_entry("m", path)]))
    expected = sha256_hex(path.read_bytes())
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    readers = []
    monkeypatch.setattr(weights, "read_state_dict", lambda *a, **k: readers.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: readers.append(a))

    with pytest.raises(IntegrityError) as caught:
        load_model(manifest.get("m"))

    assert expected in str(caught.value) and sha256_hex(bytes(data)) in str(caught.value)
    assert readers == [] and path.exists()
    status = weights.model_status(manifest.get("m"))
    assert (status.available, status.cached, status.verified) == (False, True, False)


def test_file_source_without_hash_needs_opt_in(tmp_path, monkeypatch):
    path = write_safetensors(tmp_path / "m.safetensors", model_with(0.25))
    manifest = Manifest.load(write_manifest(tmp_path, [file_entry("m", path, sha256=None)]))
    entry = manifest.get("m")
    with pytest.raises(ModelUnavailableError, match="no sha256"):
        load_model(entry)
    assert not weights.model_status(entry).available

    model, warning = weights.load_model_with_warning(entry, allow_unverified=True)
    assert torch.all(model.linear.weight == 0.25) and "WITHOUT hash verification" in warning
    assert weights.model_status(entry, allow_unverified=True).available


# --------------------------------------------------------------------------- read_state_dict

def test_read_state_dict_unpickles_whole_models_only_with_matching_hash(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(Marker(marker), evil)
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        read_state_dict(evil, "torch-pickle")
    with pytest.raises(IntegrityError, match="expected sha256 " + "1" * 64):
        read_state_dict(evil, "torch-pickle", expected_sha256="1" * 64)
    assert not marker.exists()

    whole = tmp_path / "whole.pt"
    torch.save(model_with(2.0), whole)
    state = read_state_dict(whole, "torch-pickle", expected_sha256=sha256_hex(whole.read_bytes()))
    assert torch.all(state["linear.weight"] == 2.0)

    plain = tmp_path / "plain.pt"
    torch.save(model_with(3.0).state_dict(), plain)
    assert torch.all(read_state_dict(plain, "torch-pickle")["linear.weight"] == 3.0)
    with pytest.raises(WeightsError, match="unknown weights format"):
        read_state_dict(plain, "onnx")


def test_real_xrv_densenet_pickle_fits_the_manifest_architecture(tmp_path):
    """A whole pickled torchxrayvision DenseNet (the Hub's model.pt layout) loads strictly."""
    import torchxrayvision as xrv

    manifest_entry = next(e for e in json.loads((REPO / "weights_manifest.json").read_text())["models"]
                          if e["id"] == "densenet121-res224-all")
    torch.manual_seed(0)
    original = xrv.models.DenseNet(weights=None, num_classes=18, op_threshs=torch.full((18,), 0.5))
    path = tmp_path / "model.pt"
    torch.save(original, path)
    entry_data = dict(manifest_entry, source={"type": "file", "path": "model.pt",
                                              "sha256": sha256_hex(path.read_bytes()),
                                              "size": path.stat().st_size})
    model = load_model(ModelEntry.from_dict(entry_data, tmp_path))

    assert torch.equal(model.net.classifier.weight, original.classifier.weight)
    assert model.pathologies == manifest_entry["labels"] and len(model.thresholds) == 18


# --------------------------------------------------------------------------- fallback

def fallback_manifest(tmp_path: Path) -> Manifest:
    default = write_safetensors(tmp_path / "default.safetensors", model_with(1.0))
    return Manifest.load(write_manifest(tmp_path, [
        file_entry("embedded", default, default=True),
        {"id": "remote", "kind": "classifier", "architecture": "test-weights-tiny-linear", "labels": LABELS,
         "source": {"type": "hub", "repo_id": "test-org/remote", "filename": "model.safetensors",
                    "revision": git_like_commit("remote"), "sha256": "cd" * 32, "size": 1}},
        {"id": "unpinned", "kind": "classifier", "architecture": "test-weights-tiny-linear", "labels": LABELS,
         "source": {"type": "hub", "repo_id": "test-org/unpinned", "filename": "model.pt",
                    "revision": None, "sha256": "ef" * 32, "size": 1}},
    ]))


def test_fallback_to_the_embedded_default_names_model_and_reason(tmp_path):
    manifest = fallback_manifest(tmp_path)

    model, entry, warning = load_model_or_default(manifest, "unpinned", "classifier")
    assert entry.id == "embedded" and torch.all(model.linear.weight == 1.0)
    assert "'unpinned'" in warning and "revision not pinned" in warning

    model, entry, warning = load_model_or_default(manifest, "no-such-model", "classifier")
    assert entry.id == "embedded" and "no-such-model" in warning

    model, entry, warning = load_model_or_default(manifest, None, "classifier")
    assert entry.id == "embedded" and warning is None


def test_no_default_means_the_original_error(tmp_path):
    manifest = Manifest.load(write_manifest(tmp_path, [
        {"id": "remote", "kind": "classifier", "architecture": "test-weights-tiny-linear", "labels": LABELS,
         "source": {"type": "hub", "repo_id": "o/r", "filename": "f", "revision": git_like_commit("r"),
                    "sha256": "ab" * 32, "size": 1}}]))
    with pytest.raises(ModelUnavailableError, match="offline"):
        load_model_or_default(manifest, "remote", "classifier")


# --------------------------------------------------------------------------- the project's manifest

def project_manifest() -> Manifest:
    return Manifest.load(REPO / "weights_manifest.json")


def test_project_hub_entries_are_pinned_and_hashed():
    import torchxrayvision as xrv

    hub_entries = [e for e in project_manifest() if e.source_type == "hub"]
    assert {"densenet121-res224-all", "densenet121-res224-rsna", "densenet121-res224-pc"} <= {
        e.id for e in hub_entries}
    for entry in hub_entries:
        revision = entry.source["revision"]
        assert revision is None or re.fullmatch(r"[0-9a-f]{40}", revision), entry.id
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.size > 1_000_000
        assert entry.architecture == "xrv-densenet121" and entry.format == "torch-pickle"
        reference = xrv.models.model_urls[entry.id]
        assert list(entry.labels) == reference["labels"]
        assert [None if t is None else t for t in entry.thresholds] == [
            None if math.isnan(t) else pytest.approx(t) for t in reference["op_threshs"]]
        assert entry.info["license"] and "TorchXRayVision" in entry.info["citation"]
    all_model = project_manifest().get("densenet121-res224-all")
    assert all_model.source["revision"] == "588eadcc6a744da71f8dce768bc974ec629443f5"
    assert all_model.sha256 == "56524913dd16a906422e8d8b66a7a5c46be1d82eb7ac012d8103776f1aa68899"
    assert all_model.size == 28382008


def test_project_autoencoder_is_an_honest_url_entry():
    import torchxrayvision as xrv

    entry = project_manifest().get("resnetae-101-elastic", "autoencoder")
    assert entry.source_type == "url" and entry.sha256 is None and entry.size is None
    assert entry.source["url"] == xrv.autoencoders.model_urls["101-elastic"]["weights_url"]
    assert "hash is unknown" in entry.source["note"]
    assert hub.unverified_permitted(entry) == "read as plain tensors from the HTTPS source github.com"
    status = weights.model_status(entry, check_network=False)
    assert not status.available and not status.cached


def test_space_card_preloads_exactly_the_pinned_commits():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    raw_front_matter = text.split("---\n")[1]
    card = yaml.safe_load(raw_front_matter)
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    assert card["sdk_version"] == "6.31.0" and card["python_version"] == "3.11"
    assert 'python_version: "3.11"' in raw_front_matter
    assert "not for clinical use" in card["short_description"] and len(card["short_description"]) <= 60
    pinned = {e.source["repo_id"]: e.source for e in project_manifest()
              if e.source_type == "hub" and e.source.get("revision")}
    preloads = {}
    for line in card["preload_from_hub"]:
        repo_id, filename, revision = line.split()
        preloads[repo_id] = (filename, revision)
    assert preloads == {repo: (s["filename"], s["revision"]) for repo, s in pinned.items()}
    assert set(card["models"]) == set(pinned)


# --------------------------------------------------------------------------- command line

def cli_manifest(tmp_path: Path) -> Path:
    """One of each: verified file, cached Hub model, uncached Hub model, unpinned, unknown-hash URL."""
    good = write_safetensors(tmp_path / "good.safetensors", model_with(1.0))
    cached_data = b"cached weights"
    commit = git_like_commit("cached")
    fill_hub_cache(tmp_path / "hub-cache", "test-org/cached", commit, "model.pt", cached_data)
    hub_source = {"type": "hub", "filename": "model.pt", "size": None}
    return write_manifest(tmp_path, [
        file_entry("demo-good", good, default=True),
        {"id": "hub-cached", "kind": "classifier", "architecture": "test-weights-tiny-linear", "labels": LABELS,
         "source": dict(hub_source, repo_id="test-org/cached", revision=commit, sha256=sha256_hex(cached_data))},
        {"id": "hub-remote", "kind": "classifier", "architecture": "test-weights-tiny-linear", "labels": LABELS,
         "source": dict(hub_source, repo_id="test-org/remote", revision=git_like_commit("x"), sha256="ab" * 32)},
        {"id": "hub-unpinned", "kind": "classifier", "architecture": "test-weights-tiny-linear", "labels": LABELS,
         "source": dict(hub_source, repo_id="test-org/unpinned", revision=None, sha256="cd" * 32)},
        {"id": "ae-url", "kind": "autoencoder", "architecture": "test-weights-tiny-linear",
         "source": {"type": "url", "url": "http://example.invalid/assets/ae.pt", "sha256": None, "size": None}},
        {"id": "ae-https", "kind": "autoencoder", "architecture": "test-weights-tiny-linear", "format": "torch-pickle",
         "source": {"type": "url", "url": "https://example.invalid/assets/ae.pt", "sha256": None, "size": None}},
    ])


def table_rows(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.strip().splitlines()[1:]}


def test_weights_list_is_honest(tmp_path, capsys):
    manifest = cli_manifest(tmp_path)
    assert cli.main(["weights", "--manifest", str(manifest), "list"]) == 0
    output = capsys.readouterr().out
    header, *_ = output.splitlines()
    assert header.split() == ["ID", "KIND", "SOURCE", "CACHED", "VERIFIED", "STATUS"]
    rows = table_rows(output)
    assert re.search(r"file:good\.safetensors\s+yes\s+yes\s+available", rows["demo-good"])
    assert re.search(r"hub:test-org/cached@\w{7}\s+yes\s+yes\s+available: cached, sha256 verified",
                     rows["hub-cached"])
    assert re.search(r"no\s+-\s+unavailable: offline \(HF_HUB_OFFLINE\) and not cached", rows["hub-remote"])
    assert "unavailable: revision not pinned" in rows["hub-unpinned"] and "@unpinne" in rows["hub-unpinned"]
    assert "unavailable: hash unknown" in rows["ae-url"] and "url:example.invalid" in rows["ae-url"]
    assert "unavailable: offline (HF_HUB_OFFLINE) and not cached" in rows["ae-https"], "HTTPS: only the network lacks"


def test_weights_verify_and_fetch(tmp_path, capsys):
    manifest = cli_manifest(tmp_path)
    assert cli.main(["weights", "--manifest", str(manifest), "verify"]) == 0
    output = capsys.readouterr().out
    assert "ok       demo-good" in output and "ok       hub-cached" in output
    assert "missing  hub-remote" in output

    cached = hub.cached_path(Manifest.load(manifest).get("hub-cached"))
    cached.write_bytes(b"tampered weights")
    assert cli.main(["weights", "--manifest", str(manifest), "verify", "hub-cached"]) == 2
    captured = capsys.readouterr()
    assert "MISMATCH hub-cached" in captured.out and sha256_hex(b"tampered weights") in captured.out
    assert captured.err.strip().count("\n") == 0 and "failed verification" in captured.err

    assert cli.main(["weights", "--manifest", str(manifest), "fetch", "hub-remote"]) == 2
    captured = capsys.readouterr()
    assert "FAILED   hub-remote" in captured.out and "offline" in captured.out

    assert cli.main(["weights", "--manifest", str(manifest), "fetch", "no-such-id"]) == 2
    assert "unknown model id 'no-such-id'" in capsys.readouterr().err
