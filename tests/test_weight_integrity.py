"""Repository-wide guards on deserialising weights.

Already covered elsewhere (not repeated here):
* one byte flipped in a file source -> IntegrityError naming both hashes, nothing read:
  tests/test_weights.py::test_tampered_byte_in_file_source_is_refused_before_deserialisation
* a pickle carrying code -> refused, never run: test_weights.py::
  test_read_state_dict_unpickles_whole_models_only_with_matching_hash, test_hub.py::
  test_unverified_pickle_carrying_code_is_refused_and_never_run,
  test_hub.py::test_tampered_cached_pickle_is_refused_before_unpickling (same size, other hash)
* size mismatch of a download: test_hub.py::test_size_mismatch_is_refused
* the CLI's one line for tampered weights: test_pipeline_cli.py::test_cli_refuses_tampered_weights

Here: a truncated file source, every ``torch.load`` and other unpickler in the shipped
source, and the contents of ``weights/``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from latentshift import weights
from latentshift.errors import IntegrityError
from latentshift.weights import Manifest, load_model
from tiny_models import write_tiny_manifest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SOURCE = sorted((REPO / "latentshift").rglob("*.py")) + [REPO / "app.py"]
#: What weights/ may hold besides safetensors: model cards, metrics, licences.
DOC_SUFFIXES = {".md", ".txt", ".json", ".csv", ".cff"}
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".h5", ".npy", ".npz", ".joblib", ".onnx"}


def test_truncated_file_source_is_refused_before_deserialisation(tmp_path, monkeypatch):
    manifest = Manifest.load(write_tiny_manifest(tmp_path))
    path = tmp_path / "tiny-classifier.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    readers = []
    monkeypatch.setattr(weights, "read_state_dict", lambda *a, **k: readers.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: readers.append(a))
    with pytest.raises(IntegrityError, match="refusing to load"):
        load_model(manifest.get("tiny-classifier"))
    assert readers == [] and path.exists()


def _calls(tree: ast.AST):
    """(call, enclosing function name, chain of enclosing If tests) for every call."""
    def walk(node, function, tests):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(child, child.name, tests)
            elif isinstance(child, ast.If):
                yield from walk(child.test, function, tests)
                for statement in child.body:
                    yield from walk_statement(statement, function, tests + [(child, "body")])
                for statement in child.orelse:
                    yield from walk_statement(statement, function, tests + [(child, "orelse")])
            else:
                if isinstance(child, ast.Call):
                    yield child, function, tests
                yield from walk(child, function, tests)

    def walk_statement(statement, function, tests):
        if isinstance(statement, ast.Call):
            yield statement, function, tests
        yield from walk(ast.Module(body=[statement], type_ignores=[]), function, tests)

    yield from walk(tree, "<module>", [])


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_verified_branch(if_node: ast.If, branch: str) -> bool:
    """``if expected_sha256:`` whose body first compares the hash and raises IntegrityError.

    The comparison is ``actual != expected_sha256`` or ``not same_sha256(actual, expected_sha256)``.
    """
    if branch != "body" or _dotted(if_node.test) != "expected_sha256":
        return False
    for statement in if_node.body:
        if not isinstance(statement, ast.If):
            continue
        test = statement.test
        compares = isinstance(test, ast.Compare) or (
            isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call)
            and _dotted(test.operand.func) == "same_sha256")
        raises = [s for s in statement.body if isinstance(s, ast.Raise)]
        if compares and "expected_sha256" in ast.unparse(test) and raises and \
                "IntegrityError" in ast.unparse(raises[0]):
            return True
    return False


def test_every_torch_load_reads_tensors_only_or_verified_bytes():
    verified_calls, found = [], []
    for path in SHIPPED_SOURCE:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call, function, tests in _calls(tree):
            name = _dotted(call.func)
            if name not in ("torch.load", "load") or (name == "load" and "torch" not in ast.unparse(call)):
                continue
            where = f"{path.relative_to(REPO)}:{call.lineno} in {function}()"
            found.append(where)
            weights_only = _keyword(call, "weights_only")
            if isinstance(weights_only, ast.Constant) and weights_only.value is True:
                continue
            assert path.relative_to(REPO).as_posix() == "latentshift/weights/loading.py" and function == "read_state_dict", \
                f"{where}: torch.load without weights_only=True"
            assert any(_is_verified_branch(node, branch) for node, branch in tests), \
                f"{where}: full unpickling outside the sha256-verified branch"
            verified_calls.append(where)
    assert found, "the scan found no torch.load at all: it is not looking at the right files"
    assert len(verified_calls) == 1, verified_calls


def test_no_other_unpickler_in_the_shipped_source():
    forbidden = {"pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load", "torch.jit.load",
                 "torch.hub.load", "torch.hub.load_state_dict_from_url", "shelve.open", "marshal.loads"}
    offences = []
    for path in SHIPPED_SOURCE:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                allow_pickle = _keyword(node, "allow_pickle")
                if name in forbidden or (name.endswith("np.load") or name == "numpy.load") and not (
                        allow_pickle is None or (isinstance(allow_pickle, ast.Constant) and not allow_pickle.value)):
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if any(m in ("pickle", "dill", "joblib", "cloudpickle") for m in modules):
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno} imports {modules}")
    assert offences == []


def test_weights_folder_ships_safetensors_and_documentation_only():
    folder = REPO / "latentshift" / "embedded"
    if not folder.is_dir():
        pytest.skip("no weights/ folder yet")
    files = [p for p in folder.rglob("*") if p.is_file()]
    bad = [str(p.relative_to(REPO)) for p in files
           if p.suffix.lower() != ".safetensors" and p.suffix.lower() not in DOC_SUFFIXES]
    assert bad == [], f"weights/ may hold .safetensors plus documentation/metrics only: {bad}"
    assert not [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    for path in files:
        if path.suffix.lower() == ".json":  # metrics or cards: plain JSON, not disguised weights
            json.loads(path.read_text(encoding="utf-8"))


def test_every_shipped_file_source_is_hashed_safetensors():
    manifest = Manifest.load()
    entries = [entry for entry in manifest if entry.source_type == "file"]
    for entry in entries:
        assert entry.format == "safetensors", f"{entry.id}: shipped weights must be safetensors"
        assert entry.sha256 and len(entry.sha256) == 64, f"{entry.id}: no sha256"
        path = weights.local_file_path(entry)
        assert (REPO / "latentshift" / "embedded") in path.resolve().parents, f"{entry.id}: {path} is outside latentshift/embedded/"
        if path.is_file():
            assert weights.sha256_of(path) == entry.sha256.lower(), f"{entry.id}: the shipped file fails its hash"
