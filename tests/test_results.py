"""The result store (latentshift/results): ids, atomic writes, expiry and tombstones, checks, the
restore from a dataset repo (against tests/fakehub.py), and ``latentshift results``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


from fakehub import FakeHub
from latentshift.cli import main as cli_main
from latentshift.results import mirror
from latentshift.results.store import RECORD_NAME, ResultStore, result_key


def files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latentshift.gif").write_bytes(b"GIF89a" + os.urandom(64))
    (folder / "summary.json").write_text(json.dumps({"target": "Pneumonia"}))
    return {"gif": folder / "latentshift.gif", "summary": folder / "summary.json"}


def key(n: int = 0) -> str:
    return result_key(f"{n:064x}", {"classifier": "c", "autoencoder": "a"}, {"frames": 12})


def test_the_id_names_input_models_and_options():
    base = result_key("ab" * 32, {"classifier": "c", "autoencoder": "a"}, {"frames": 12, "target": None})
    assert base == result_key("ab" * 32, {"autoencoder": "a", "classifier": "c"}, {"target": None, "frames": 12})
    assert len({base, result_key("ac" * 32, {"classifier": "c", "autoencoder": "a"}, {"frames": 12, "target": None}),
                result_key("ab" * 32, {"classifier": "d", "autoencoder": "a"}, {"frames": 12, "target": None}),
                result_key("ab" * 32, {"classifier": "c", "autoencoder": "a"}, {"frames": 13, "target": None})}) == 4


def test_a_result_is_kept_whole_and_survives_a_new_store_object(tmp_path):
    store = ResultStore(tmp_path / "store", retention_days=1)
    stored = store.put(key(), files(tmp_path / "run"), {"page": {"status": "Done in 1 s"}})
    assert stored.file("gif").read_bytes() == (tmp_path / "run" / "latentshift.gif").read_bytes()
    assert stored.file("gif").name == "latentshift.gif"   # the downloads keep the run's file names
    assert json.loads(stored.file("summary").read_text()) == {"target": "Pneumonia"}
    again = ResultStore(tmp_path / "store", retention_days=1)  # a restart
    assert again.get(key()).record["page"]["status"] == "Done in 1 s"
    assert again.check() == {"missing": [], "corrupt": [], "unindexed": []}
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert again.lookup("f" * 64).state == "unknown" and again.lookup("../etc").state == "unknown"


def test_a_crash_leaves_no_half_result_and_an_unindexed_whole_one_is_found(tmp_path):
    store = ResultStore(tmp_path / "store", retention_days=1)
    half = tmp_path / "store" / "tmp" / "abc-half"   # a write stopped before its rename
    half.mkdir()
    (half / "gif.gif").write_bytes(b"GIF")
    whole = store.put(key(1), files(tmp_path / "run"), {})
    store._execute("DELETE FROM results WHERE id = ?", whole.id)   # stopped between rename and index
    restarted = ResultStore(tmp_path / "store", retention_days=1)
    assert not half.exists()
    assert restarted.get(whole.id) is not None


def test_expired_and_deleted_results_say_so_and_check_finds_corruption(tmp_path):
    swept = ResultStore(tmp_path / "swept", retention_days=1)
    old = swept.put(key(4), files(tmp_path / "d"), {})
    assert swept.sweep(now=time.time() + 2 * 86400) == [old.id] and swept.lookup(old.id).state == "expired"
    store = ResultStore(tmp_path / "store", retention_days=1)
    first = store.put(key(1), files(tmp_path / "a"), {})
    second = store.put(key(2), files(tmp_path / "b"), {})
    assert store.lookup(first.id, now=time.time() + 2 * 86400).state == "expired"
    assert not first.folder.exists()
    assert store.delete(second.id) and store.lookup(second.id).state == "deleted" and not store.delete(second.id)
    third = store.put(key(3), files(tmp_path / "c"), {})
    third.file("gif").write_bytes(b"changed")
    assert store.verify(third.id) == "gif: contents differ from the record"
    assert store.check()["corrupt"] == [f"{third.id}: gif: contents differ from the record"]


def test_restore_from_a_dataset_repo_adds_what_the_store_lacks(tmp_path):
    source = ResultStore(tmp_path / "source", retention_days=30)
    kept = source.put(key(1), files(tmp_path / "a"), {"page": {"status": "from the mirror"}})
    mirror.write_catalog(source)
    with FakeHub() as hub:
        for path in (tmp_path / "source" / "entries").rglob("*"):
            if path.is_file():
                relative = path.relative_to(tmp_path / "source").as_posix()
                hub.add_file("lab/results", relative, path.read_bytes(), commit="1" * 40)
        target = ResultStore(tmp_path / "target", retention_days=30)
        assert mirror.restore(target, "lab/results", token="t", endpoint=hub.url) == [kept.id]
        assert target.get(kept.id).record["page"]["status"] == "from the mirror"
        assert target.verify(kept.id) == ""
        assert mirror.restore(target, "lab/results", token="t", endpoint=hub.url) == []   # nothing twice
        late = ResultStore(tmp_path / "late", retention_days=30)
        assert mirror.restore(late, "lab/results", token="t", endpoint=hub.url,
                              now=time.time() + 31 * 86400) == []                          # expired: skipped
        assert any("/datasets/lab/results/resolve/" in path for _, path in hub.requests)


def test_no_mirror_without_a_repo_and_token(tmp_path, caplog):
    store = ResultStore(tmp_path / "store", retention_days=1)
    with caplog.at_level("INFO", logger="latentshift.results"):
        assert mirror.start_mirror(store, None, None) is None
    assert "not mirrored" in caplog.text


def test_results_command_lists_checks_deletes_and_sweeps(tmp_path, capsys):
    store = ResultStore(tmp_path / "store", retention_days=1)
    kept = store.put(key(1), files(tmp_path / "a"), {})
    common = ["results", "--results-dir", str(tmp_path / "store"), "--results-days", "1"]
    assert cli_main([*common, "list"]) == 0
    assert kept.id in capsys.readouterr().out
    assert cli_main([*common, "check"]) == 0
    assert "no problem" in capsys.readouterr().out
    (kept.folder / RECORD_NAME).write_text("{")
    assert cli_main([*common, "check"]) == 1
    assert cli_main([*common, "delete", kept.id]) == 0
    assert cli_main([*common, "list", "--all"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert cli_main([*common, "sweep"]) == 0
